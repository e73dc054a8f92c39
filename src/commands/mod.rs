//! What the binary runs, one module per command: the command line (`cli`), then each command's
//! library half and, beside it, its `command` function, which turns the parsed arguments into a
//! request and prints the outcome. `main.rs` only parses and calls [`run`].

pub mod bench;
pub mod cli;
pub mod compare;
pub mod demo;
pub mod embed;
pub mod export;
pub mod generate;
pub mod pretrain;
pub mod tokenize;
pub mod transfer;

use crate::platform::{device, dist};
use crate::{tasks, Error, Result};
use cli::{Cli, Command};

/// Run one parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Tasks => {
            list_tasks();
            Ok(())
        }
        Command::Devices => {
            list_devices();
            Ok(())
        }
        Command::Pretrain(a) => pretrain::command(a),
        Command::Transfer(a) => transfer::command(a),
        Command::Demo(a) => demo::run(
            &a.out,
            &a.set,
            &a.transfer_set,
            device::parse(&a.device)?,
            a.quiet,
        )
        .map(|_| ()),
        Command::Compare(a) => compare::command(a),
        Command::Report(a) => compare::report_command(a),
        Command::Generate(a) => generate::command(a),
        Command::Tokenizer(c) => tokenize::command(c),
        Command::Embed(a) => embed::command(a),
        Command::Similar(a) => embed::similar_command(a),
        Command::Export(a) => export::command(a),
        Command::Bench(a) => bench::command(a),
    }
}

/// Started as one of several processes, only `pretrain` knows how to share the work.
pub fn only_pretrain_across_ranks(cli: &Cli) -> Result<()> {
    if dist::size() > 1 && !matches!(cli.command, Command::Pretrain(_)) {
        return Err(Error::Usage(format!(
            "started as {} processes by mpirun/srun: only `pretext pretrain` runs across processes; \
             run other commands as one process",
            dist::size()
        )));
    }
    Ok(())
}

/// `pretext tasks`: every pretext task, one line each.
fn list_tasks() {
    let width = tasks::TASKS.iter().map(|t| t.name.len()).max().unwrap_or(0);
    for t in tasks::TASKS {
        let kind = if t.is_text() { "text" } else { "images" };
        println!("{:width$}  {kind:6}  {}", t.name, t.description);
    }
}

/// `pretext devices`: each `--device` name and what it is on this machine (opening a GPU
/// device asks its driver for the adapter).
fn list_devices() {
    for name in device::DEVICES {
        let what = match device::parse(name) {
            Ok(d) => device::describe(&d),
            Err(e) => e.to_string(),
        };
        println!("{name}: {what}");
    }
}

/// The command line as typed (arguments with spaces quoted), for the report.
pub fn command_line() -> String {
    std::env::args()
        .enumerate()
        .map(|(i, a)| {
            let a = if i == 0 { "pretext".to_string() } else { a };
            if a.contains(' ') || a.is_empty() {
                format!("{a:?}")
            } else {
                a
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A value for `--set`: quoted so TOML reads it as a string.
pub fn quote(s: &str) -> String {
    format!("{:?}", s)
}
