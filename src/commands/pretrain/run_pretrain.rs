//! `pretext pretrain` from the command line: the arguments become a config (image or text), the
//! run is started or resumed, and its summary printed (by rank 0 alone under MPI).

use super::{pretrain, pretrain_text, PretrainRequest, PretrainSummary, TextPretrainRequest};
use crate::commands::cli::PretrainArgs;
use crate::commands::quote;
use crate::config::{self, PretrainConfig, TextConfig};
use crate::platform::{device, dist};
use crate::{tasks, Error, Result};

/// What [`run`] did: the run's summary, and whether it was a text run (which is printed
/// differently).
pub struct Pretrained {
    pub summary: PretrainSummary,
    pub text: bool,
}

pub fn command(a: PretrainArgs) -> Result<()> {
    let done = run(a)?;
    // Under MPI rank 0 alone reports.
    if !dist::is_writer() {
        return Ok(());
    }
    if done.text {
        print_text(&done.summary);
    } else {
        print_image(&done.summary);
    }
    Ok(())
}

/// The library half of `pretext pretrain` (also the Python package's `pretrain`): start or resume
/// the run the arguments describe and return its summary, printing nothing but progress.
pub fn run(a: PretrainArgs) -> Result<Pretrained> {
    if is_text_pretrain(&a)? {
        return text(a).map(|summary| Pretrained {
            summary,
            text: true,
        });
    }
    if a.tokenizer.is_some() {
        return Err(Error::Usage(
            "--tokenizer is for the text tasks (causal-lm, masked-lm)".into(),
        ));
    }
    let device = device::parse(&a.device)?;
    let (config, out, resume) = match a.resume {
        Some(dir) => (PretrainConfig::default(), dir, true),
        None => {
            let sets = sets(&a, &[]);
            let cfg: PretrainConfig =
                config::resolve(a.config.as_deref(), &sets, &tasks::image_names())?;
            (cfg, out_dir(a.out)?, false)
        }
    };
    let summary = pretrain(PretrainRequest {
        config,
        out,
        device,
        resume,
        dataset: None,
        skip_bad: a.skip_bad,
        stop_after: a.stop_after,
        // Under MPI rank 0 alone reports.
        quiet: a.quiet || !dist::is_writer(),
    })?;
    Ok(Pretrained {
        summary,
        text: false,
    })
}

fn print_image(summary: &PretrainSummary) {
    print_summary(summary, "items");
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
}

/// The run's one line: steps, time, throughput (`unit`/s), final loss, where it is.
fn print_summary(s: &PretrainSummary, unit: &str) {
    println!(
        "{} {} steps of {} in {:.1}s ({:.0} {unit}/s), final loss {:.4}; run in {}",
        if s.completed {
            "finished"
        } else {
            "stopped after"
        },
        s.steps_done,
        s.steps,
        s.wall_s,
        s.items_per_s,
        s.final_loss,
        s.run_dir.display()
    );
    if let Some(line) = s.out_of_time_line() {
        println!("{line}");
    }
}

/// `--task`, `--data` (and `--tokenizer`) as `--set` lines ahead of the user's own.
fn sets(a: &PretrainArgs, extra: &[(&str, &Option<String>)]) -> Vec<String> {
    let mut sets = Vec::new();
    let named = [("task", &a.task), ("data", &a.data)];
    for (key, value) in named.iter().chain(extra) {
        if let Some(v) = value {
            sets.push(format!("{key}={}", quote(v)));
        }
    }
    sets.extend(a.set.iter().cloned());
    sets
}

fn out_dir(out: Option<std::path::PathBuf>) -> Result<std::path::PathBuf> {
    out.ok_or_else(|| Error::Usage("--out DIR is required (the run directory to create)".into()))
}

/// Whether `pretrain` asks for a text task: resuming a text run, or a text task named by
/// `--task`, `--set task=…` or the `--config` file.
fn is_text_pretrain(a: &PretrainArgs) -> Result<bool> {
    if let Some(dir) = &a.resume {
        let cfg = std::fs::read_to_string(dir.join("config.toml")).unwrap_or_default();
        let task = toml::from_str::<toml::Table>(&cfg)
            .ok()
            .and_then(|t| t.get("task")?.as_str().map(str::to_string));
        return Ok(task.is_some_and(|t| tasks::find_text(&t).is_some()));
    }
    let mut task = a.task.clone();
    for set in &a.set {
        if let Some(v) = set.strip_prefix("task=") {
            task = Some(v.trim_matches('"').to_string());
        }
    }
    if task.is_none() {
        if let Some(path) = &a.config {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Usage(format!("--config {}: {e}", path.display())))?;
            task = toml::from_str::<toml::Table>(&text)
                .ok()
                .and_then(|t| t.get("task")?.as_str().map(str::to_string));
        }
    }
    Ok(task.is_some_and(|t| tasks::find_text(&t).is_some()))
}

fn text(a: PretrainArgs) -> Result<PretrainSummary> {
    let device = device::parse(&a.device)?;
    if a.skip_bad {
        return Err(Error::Usage("--skip-bad is for image data".into()));
    }
    let (config, out, resume) = match a.resume {
        Some(dir) => (TextConfig::default(), dir, true),
        None => {
            let tokenizer = a.tokenizer.clone();
            let sets = sets(&a, &[("tokenizer", &tokenizer)]);
            let cfg: TextConfig =
                config::resolve(a.config.as_deref(), &sets, &tasks::text_names())?;
            (cfg, out_dir(a.out)?, false)
        }
    };
    pretrain_text(TextPretrainRequest {
        config,
        out,
        device,
        resume,
        stop_after: a.stop_after,
        quiet: a.quiet || !dist::is_writer(),
    })
}

fn print_text(s: &PretrainSummary) {
    print_summary(s, "tokens");
    let get = |k: &str| s.eval.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    match (get("val_loss"), get("val_ppl")) {
        (Some(loss), Some(ppl)) => println!("validation loss {loss:.4} (perplexity {ppl:.2})"),
        (Some(_), None) => {
            let eval: Vec<String> = s.eval.iter().map(|(k, v)| format!("{k} {v:.4}")).collect();
            println!("validation: {}", eval.join(", "));
        }
        _ => {}
    }
    let sample = s.run_dir.join("sample.txt");
    if s.completed && sample.exists() {
        println!("a generated sample is in {}", sample.display());
    }
}
