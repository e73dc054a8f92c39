//! The `pretext` binary: parse the command line, call the library, print the error chain once.

mod cli;

use clap::Parser;
use pretext::config::{self, PretrainConfig};
use pretext::transfer::{
    self, labels::PerClass, Protocol, Source, TransferConfig, TransferRequest,
};
use pretext::{bench, compare, demo, device, tasks, train, Error, Result};

use cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        let code = e.exit_code();
        eprintln!("error: {:#}", anyhow::Error::new(e));
        std::process::exit(code);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Tasks => {
            let width = tasks::TASKS.iter().map(|t| t.name.len()).max().unwrap_or(0);
            for t in tasks::TASKS {
                println!("{:width$}  {}", t.name, t.description);
            }
            Ok(())
        }
        Command::Pretrain(a) => {
            let device = device::parse(&a.device)?;
            let (config, out, resume) = match a.resume {
                Some(dir) => (PretrainConfig::default(), dir, true),
                None => {
                    let mut sets = Vec::new();
                    if let Some(t) = &a.task {
                        sets.push(format!("task={}", quote(t)));
                    }
                    if let Some(d) = &a.data {
                        sets.push(format!("data={}", quote(d)));
                    }
                    sets.extend(a.set.iter().cloned());
                    let cfg: PretrainConfig =
                        config::resolve(a.config.as_deref(), &sets, &tasks::names())?;
                    let out = a.out.ok_or_else(|| {
                        Error::Usage("--out DIR is required (the run directory to create)".into())
                    })?;
                    (cfg, out, false)
                }
            };
            let summary = train::pretrain(train::PretrainRequest {
                config,
                out,
                device,
                resume,
                dataset: None,
                skip_bad: a.skip_bad,
                stop_after: a.stop_after,
                quiet: a.quiet,
            })?;
            println!(
                "{} {} steps of {} in {:.1}s ({:.0} items/s), final loss {:.4}; run in {}",
                if summary.completed {
                    "finished"
                } else {
                    "stopped after"
                },
                summary.steps_done,
                summary.steps,
                summary.wall_s,
                summary.items_per_s,
                summary.final_loss,
                summary.run_dir.display()
            );
            if summary.skipped_steps > 0 {
                println!(
                    "{} steps were skipped for a NaN/Inf loss (on_nonfinite = \"skip\")",
                    summary.skipped_steps
                );
            }
            if !summary.eval.is_empty() {
                let eval: Vec<String> = summary
                    .eval
                    .iter()
                    .map(|(k, v)| format!("{k} {v:.4}"))
                    .collect();
                println!("held-out test images: {}", eval.join(", "));
            }
            Ok(())
        }
        Command::Transfer(a) => {
            let device = device::parse(&a.device)?;
            let from = Source::parse(&a.from);
            let cfg: TransferConfig = config::resolve(a.config.as_deref(), &a.set, &[])?;
            let data = match (&a.data, &from) {
                (Some(d), _) => d.clone(),
                (None, Source::Run(run)) => transfer::read_encoder_info(run)?.data,
                (None, _) => {
                    return Err(Error::Usage(
                        "--data FORMAT:PATH is required with --from random|scratch".into(),
                    ))
                }
            };
            let mut pcfg = PretrainConfig {
                data,
                image_size: cfg.image_size,
                ..Default::default()
            };
            if let Source::Run(run) = &from {
                if let Ok(c) = config::from_toml_file::<PretrainConfig>(&run.join("config.toml")) {
                    pcfg.image_size = c.image_size;
                    pcfg.stream = c.stream;
                }
            }
            pcfg.limit = 0;
            let dataset = train::open_dataset(&pcfg, false)?;
            let req = TransferRequest {
                from,
                protocol: Protocol::parse(&a.protocol)?,
                labels_per_class: PerClass::parse(&a.labels_per_class)?,
                config: cfg,
                out: a.out,
                device,
                quiet: a.quiet,
            };
            let (result, path) = transfer::transfer(&dataset, &req)?;
            println!(
                "{} probe of {} with {} labels/class ({} train, {} {}): ",
                result.protocol.name(),
                result.from,
                result.labels_per_class,
                result.n_train,
                result.n_test,
                result.evaluated_on
            );
            println!("accuracy: {:.4}", result.accuracy);
            println!("written to {}", path.display());
            Ok(())
        }
        Command::Demo(a) => {
            demo::run(&a.out, &a.set, device::parse(&a.device)?, a.quiet).map(|_| ())
        }
        Command::Compare(a) => {
            let outcome = compare::run(&compare::CompareRequest {
                device: device::parse(&a.device)?,
                data: a.data,
                tasks: a.tasks,
                labels_per_class: a.labels_per_class,
                protocols: a.protocols,
                budget: a.budget,
                seeds: a.seeds,
                stages: a.stages,
                pretrain_sets: a.set,
                transfer_sets: a.transfer_set,
                out: a.out,
                device_name: a.device,
                command: command_line(),
                quiet: a.quiet,
            })?;
            for (task, why) in &outcome.skipped {
                println!("skipped {task}: {why}");
            }
            if outcome.interrupted {
                println!("interrupted: rerun the same command to continue");
            }
            let md = std::fs::read_to_string(&outcome.report_md).unwrap_or_default();
            if let Some(table) = md.split("## All numbers").nth(1) {
                let table: String = table
                    .lines()
                    .skip_while(|l| !l.starts_with('|'))
                    .take_while(|l| l.starts_with('|'))
                    .collect::<Vec<_>>()
                    .join("\n");
                println!("{table}");
            }
            println!(
                "{} of {} cells computed in this run; report: {} and {}",
                outcome.cells_run,
                outcome.cells_total,
                outcome.report_html.display(),
                outcome.report_md.display()
            );
            Ok(())
        }
        Command::Report(a) => {
            let (html, md) = compare::report::build(&a.out)?;
            println!("report: {} and {}", html.display(), md.display());
            Ok(())
        }
        Command::Bench(a) => bench::run(&bench::BenchOptions {
            tasks: a
                .tasks
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
            backbone: a.backbone,
            batch_size: a.batch_size,
            steps: a.steps,
            python: a.python,
            device: a.device,
            torch_device: a.torch_device,
            threads: a.threads,
            loader_seconds: a.loader_seconds,
            json: a.json,
            child: a.child,
            dump: a.dump,
        }),
    }
}

/// The command line as typed (arguments with spaces quoted), for the report.
fn command_line() -> String {
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
fn quote(s: &str) -> String {
    format!("{:?}", s)
}
