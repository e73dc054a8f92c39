//! The `pretext` binary: parse the command line, call the library, print the error chain once.

mod cli;

use clap::Parser;
use pretext::config::TextConfig;
use pretext::config::{self, PretrainConfig};
use pretext::pretrain::{self, TextPretrainRequest};
use pretext::transfer::text::{self as text_transfer, TextTransferConfig, TextTransferRequest};
use pretext::transfer::{
    self, labels::PerClass, Protocol, Source, TransferConfig, TransferRequest,
};
use pretext::{bench, compare, demo, device, dist, tasks, tokenize_cmd, Error, Result};

use cli::{Cli, Command, TokenizerCommand};

/// mimalloc keeps freed blocks for reuse where glibc's malloc hands every large tensor buffer
/// back to the kernel and faults it in again on the next step: causal-LM training steps ran
/// ~25 % faster with it on this machine (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's `mi_option_set` (in the static library the `mimalloc` crate links).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in the mimalloc v3 sources that libmimalloc-sys 0.1.49 builds
/// (`c_src/mimalloc/v3/include/mimalloc.h`; Cargo.toml pins that version for this reason).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Never hand freed pages back to the kernel. A training step frees and reallocates the same
/// tensor buffers every step; with mimalloc's default purging the kernel zeroed them again on
/// the next touch (`clear_page_erms` 17 % of a causal-LM step's samples, 1 thread). The process
/// keeps its peak footprint instead, which it reaches on every step anyway. An explicit
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; valid at any time, including before other threads.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() {
    keep_freed_pages();
    let cli = Cli::parse();
    // Under mpirun/srun: join the MPI world (finalised when `session` drops).
    let session = match dist::init().and_then(|s| only_pretrain_across_ranks(&cli).map(|_| s)) {
        Ok(s) => s,
        Err(e) => fail(e),
    };
    let result = run(cli);
    if let Err(e) = result {
        if dist::size() > 1 {
            // The other ranks may be waiting for this one in a collective: end the whole job.
            eprintln!(
                "error on rank {} of {}: {:#}",
                dist::rank(),
                dist::size(),
                anyhow::Error::new(e)
            );
            dist::abort_job(2);
            unreachable!("MPI_Abort returns only when not under MPI");
        }
        drop(session);
        fail(e);
    }
    drop(session);
}

fn fail(e: Error) -> ! {
    let code = e.exit_code();
    eprintln!("error: {:#}", anyhow::Error::new(e));
    std::process::exit(code);
}

/// Started as one of several processes, only `pretrain` knows how to share the work.
fn only_pretrain_across_ranks(cli: &Cli) -> Result<()> {
    if dist::size() > 1 && !matches!(cli.command, Command::Pretrain(_)) {
        return Err(Error::Usage(format!(
            "started as {} processes by mpirun/srun: only `pretext pretrain` runs across processes; \
             run other commands as one process",
            dist::size()
        )));
    }
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Tasks => {
            let width = tasks::TASKS.iter().map(|t| t.name.len()).max().unwrap_or(0);
            for t in tasks::TASKS {
                let kind = if t.is_text() { "text" } else { "images" };
                println!("{:width$}  {kind:6}  {}", t.name, t.description);
            }
            Ok(())
        }
        Command::Pretrain(a) if is_text_pretrain(&a)? => pretrain_text(a),
        Command::Pretrain(a) => {
            if a.tokenizer.is_some() {
                return Err(Error::Usage(
                    "--tokenizer is for the text tasks (causal-lm, masked-lm)".into(),
                ));
            }
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
                        config::resolve(a.config.as_deref(), &sets, &tasks::image_names())?;
                    let out = a.out.ok_or_else(|| {
                        Error::Usage("--out DIR is required (the run directory to create)".into())
                    })?;
                    (cfg, out, false)
                }
            };
            let summary = pretrain::pretrain(pretrain::PretrainRequest {
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
            if !dist::is_writer() {
                return Ok(());
            }
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
        Command::Transfer(a)
            if text_transfer::is_text_transfer(&Source::parse(&a.from), a.data.as_deref()) =>
        {
            transfer_text(a)
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
            let dataset = pretrain::open_dataset(&pcfg, false)?;
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
                "{} of {} with {} labels/class ({} train, {} {}): ",
                result.protocol.name(),
                result.from,
                result.labels_per_class,
                result.n_train,
                result.n_test,
                result.evaluated_on
            );
            if let Some(s) = &result.semi {
                println!(
                    "teacher (fine-tuned) accuracy: {:.4}; the student learned from {} unlabelled training images",
                    s.teacher_accuracy, s.pool
                );
            }
            println!("accuracy: {:.4}", result.accuracy);
            println!("written to {}", path.display());
            Ok(())
        }
        Command::Demo(a) => demo::run(
            &a.out,
            &a.set,
            &a.transfer_set,
            device::parse(&a.device)?,
            a.quiet,
        )
        .map(|_| ()),
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
        Command::Generate(a) => generate(a),
        Command::Tokenizer(TokenizerCommand::Train(a)) => tokenize_cmd::train(
            &a.data,
            &a.text_field,
            a.vocab,
            a.min_frequency,
            &a.out,
            a.quiet,
        ),
        Command::Tokenizer(TokenizerCommand::Encode(a)) => {
            tokenize_cmd::encode(&a.tokenizer, &a.text)
        }
        Command::Embed(a) => embed(a),
        Command::Similar(a) => similar(a),
        Command::Export(a) => export(a),
        Command::Bench(a) if a.generate => {
            bench::generate::run(&bench::generate::GenerateBenchOptions {
                device: a.device,
                threads: a.threads,
            })
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
            replicas: a.replicas,
            loader_seconds: a.loader_seconds,
            json: a.json,
            child: a.child,
            dump: a.dump,
        }),
    }
}

/// Whether `pretrain` asks for a text task: resuming a text run, or a text task named by
/// `--task`, `--set task=…` or the `--config` file.
fn is_text_pretrain(a: &cli::PretrainArgs) -> Result<bool> {
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

fn pretrain_text(a: cli::PretrainArgs) -> Result<()> {
    let device = device::parse(&a.device)?;
    if a.skip_bad {
        return Err(Error::Usage("--skip-bad is for image data".into()));
    }
    let (config, out, resume) = match a.resume {
        Some(dir) => (TextConfig::default(), dir, true),
        None => {
            let mut sets = Vec::new();
            if let Some(t) = &a.task {
                sets.push(format!("task={}", quote(t)));
            }
            if let Some(d) = &a.data {
                sets.push(format!("data={}", quote(d)));
            }
            if let Some(t) = &a.tokenizer {
                sets.push(format!("tokenizer={}", quote(t)));
            }
            sets.extend(a.set.iter().cloned());
            let cfg: TextConfig =
                config::resolve(a.config.as_deref(), &sets, &tasks::text_names())?;
            let out = a.out.ok_or_else(|| {
                Error::Usage("--out DIR is required (the run directory to create)".into())
            })?;
            (cfg, out, false)
        }
    };
    let s = pretrain::pretrain_text(TextPretrainRequest {
        config,
        out,
        device,
        resume,
        stop_after: a.stop_after,
        quiet: a.quiet || !dist::is_writer(),
    })?;
    if !dist::is_writer() {
        return Ok(());
    }
    println!(
        "{} {} steps of {} in {:.1}s ({:.0} tokens/s), final loss {:.4}; run in {}",
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
    if let (Some((_, loss)), Some((_, ppl))) = (s.eval.first(), s.eval.get(1)) {
        println!("validation loss {loss:.4} (perplexity {ppl:.2})");
    }
    let sample = s.run_dir.join("sample.txt");
    if s.completed && sample.exists() {
        println!("a generated sample is in {}", sample.display());
    }
    Ok(())
}

fn transfer_text(a: cli::TransferArgs) -> Result<()> {
    let cfg: TextTransferConfig = config::resolve(a.config.as_deref(), &a.set, &[])?;
    let req = TextTransferRequest {
        from: Source::parse(&a.from),
        cache_dir: None,
        data: a.data,
        protocol: Protocol::parse(&a.protocol)?,
        labels_per_class: PerClass::parse(&a.labels_per_class)?,
        config: cfg,
        out: a.out,
        device: device::parse(&a.device)?,
        quiet: a.quiet,
    };
    let (r, path) = text_transfer::transfer_text(&req)?;
    println!(
        "{} on {} with {} labels/class ({} train, {} held-out), from {}:",
        r.protocol.name(),
        r.data,
        r.labels_per_class,
        r.n_train,
        r.n_test,
        r.from
    );
    let f1: Vec<String> = r
        .f1_per_class
        .iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect();
    println!(
        "accuracy: {:.4}  macro-F1: {:.4}  (F1 per class: {}; majority class alone: accuracy {:.4})",
        r.accuracy,
        r.macro_f1,
        f1.join(", "),
        r.majority_accuracy
    );
    println!("written to {}", path.display());
    Ok(())
}

fn generate(a: cli::GenerateArgs) -> Result<()> {
    use std::io::Write;
    let device = device::parse(&a.device)?;
    let (info, model, tok) = pretrain::text_run::load_run(&a.from, &device)?;
    if !info.spec.causal {
        return Err(Error::Usage(format!(
            "{}: a {} model predicts hidden tokens from both sides and cannot continue a text; generate from a causal-lm run",
            a.from.display(),
            info.task
        )));
    }
    let sampling = pretext::generate::Sampling {
        temperature: a.temperature,
        top_k: a.top_k,
        seed: a.seed,
    };
    let prompt = tok.encode(&a.prompt);
    let mut out = std::io::stdout().lock();
    let _ = write!(out, "{}", a.prompt);
    let _ = out.flush();
    let mut decoder = pretext::data::tokenizer::StreamDecoder::new(&tok);
    let kv_cache = !a.no_cache;
    pretext::generate::generate_with(
        &model,
        &prompt,
        a.tokens,
        &sampling,
        kv_cache,
        &device,
        |id| {
            let piece = if id == tok.eos_id() {
                "\n\n".to_string()
            } else {
                decoder.push(id)
            };
            let _ = write!(out, "{piece}");
            let _ = out.flush();
            Ok(())
        },
    )?;
    let _ = writeln!(out, "{}", decoder.finish());
    Ok(())
}

fn embed(a: cli::EmbedArgs) -> Result<()> {
    let info = pretext::embed::embed(&pretext::embed::EmbedRequest {
        from: a.from,
        data: a.data,
        out: a.out.clone(),
        stage: a.stage,
        skip_bad: a.skip_bad,
        batch_size: a.batch_size,
        device: device::parse(&a.device)?,
        quiet: a.quiet,
    })?;
    let unit = if info.kind == "text" {
        "documents"
    } else {
        "images"
    };
    println!(
        "{} vectors of {} floats from {} {unit} in {:.1}s ({:.0} {unit}/s{}){}",
        info.rows,
        info.dim,
        info.data,
        info.wall_s,
        info.items_per_s,
        info.train_items_per_s.map_or(String::new(), |t| format!(
            "; training ran at {t:.0} items/s"
        )),
        if info.skipped > 0 {
            format!(", {} skipped", info.skipped)
        } else {
            String::new()
        }
    );
    println!(
        "written to {} (+ {}, {})",
        a.out.display(),
        a.out.with_extension("csv").display(),
        a.out.with_extension("json").display()
    );
    Ok(())
}

fn similar(a: cli::SimilarArgs) -> Result<()> {
    use pretext::embed::similar::{similar, SimilarRequest};
    let (hits, t) = similar(&SimilarRequest {
        from: a.from,
        index: a.index,
        query: a.query,
        k: a.k,
        device: device::parse(&a.device)?,
    })?;
    println!("rank  score   path");
    for (i, h) in hits.iter().enumerate() {
        println!("{:4}  {:.4}  {}", i + 1, h.score, h.id);
    }
    eprintln!(
        "searched {} vectors in {:.1} ms (index read in {:.1} ms, query embedded in {:.1} ms)",
        t.rows, t.search_ms, t.load_index_ms, t.embed_query_ms
    );
    Ok(())
}

fn export(a: cli::ExportArgs) -> Result<()> {
    use pretext::export::{export, ExportRequest, Format};
    let r = export(&ExportRequest {
        from: a.from,
        format: Format::parse(&a.format)?,
        out: a.out,
        device: device::parse("cpu")?,
    })?;
    println!(
        "exported {} ({} floats, {} steps of {}) as {} in {:.2}s: {} ({:.1} MB)",
        r.architecture,
        r.params,
        r.steps.map_or("?".to_string(), |s| s.to_string()),
        r.task,
        r.format,
        r.wall_s,
        r.path.display(),
        r.bytes as f64 / 1e6
    );
    if let Some(tok) = &r.tokenizer {
        println!("tokenizer: {}", tok.display());
    }
    Ok(())
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
