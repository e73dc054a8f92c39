//! `pretext compare`: which pretext task helps this data most, with how few labels. Pretrains
//! every task with the same budget, backbone and seed into `OUT/pretrain/<task>/`, evaluates
//! every task × label budget × protocol cell plus the random and scratch baselines into
//! `OUT/cells/`, then builds the report (`report.rs`). Everything lands on disk as it finishes, so
//! running the same command again skips what is done and resumes an interrupted pretraining.
//!
//! ```text
//! pretext compare --data idx:../shared/data/fashion-mnist --tasks rotation,context,jigsaw \
//!     --labels-per-class 1,10,100 --protocols linear,knn --budget 300 --out runs/cmp
//! ```

pub mod plan;
pub mod plots;
pub mod report;
mod run_compare;
pub mod tables;
mod text_compare;

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use burn::prelude::Device;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::commands::pretrain::{self, PretrainRequest};
use crate::config::{self, PretrainConfig};
use crate::data::Dataset;
use crate::engine::checkpoint::latest_checkpoint;
use crate::engine::progress::{fmt_duration, set_group};
use crate::engine::{self, run_loop, PretrainSummary};
use crate::error::{Error, Result};
use crate::nn::input::InputSpec;
use crate::platform::fsio::write_atomic;
use crate::tasks::{self, TaskContext};
use crate::transfer::{self, Source, TransferConfig, TransferRequest};
use plan::{Cell, Encoder, Kind, Settings};
pub use run_compare::{command, report_command};

/// What the command line asks for, before it is checked against the data.
pub struct CompareRequest {
    pub data: String,
    /// Comma-separated tasks; `None` = the defaults for the data's kind.
    pub tasks: Option<String>,
    /// Comma-separated label budgets; `None` = the defaults for the data's kind.
    pub labels_per_class: Option<String>,
    pub protocols: String,
    pub budget: u64,
    /// A time budget in minutes for every task's pretraining (`max_minutes`); 0 = none.
    pub minutes: f64,
    pub seeds: u64,
    pub stages: String,
    pub pretrain_sets: Vec<String>,
    pub transfer_sets: Vec<String>,
    pub out: PathBuf,
    pub device: Device,
    /// The device as named on the command line (for the report).
    pub device_name: String,
    /// The command line, recorded in the report.
    pub command: String,
    pub quiet: bool,
}

/// One invocation of `pretext compare` (a line of `OUT/log.jsonl`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Invocation {
    pub command: String,
    pub pretext_version: String,
    pub burn_version: String,
    pub device: String,
    pub cpu: String,
    /// Start time, `YYYY-MM-DD HH:MM:SS UTC`.
    pub started: String,
    pub wall_s: f64,
    pub pretrained: Vec<String>,
    pub cells_run: usize,
    pub cells_total: usize,
    pub interrupted: bool,
}

pub struct CompareOutcome {
    pub report_html: PathBuf,
    pub report_md: PathBuf,
    pub cells_run: usize,
    pub cells_total: usize,
    pub skipped: Vec<(String, String)>,
    pub interrupted: bool,
}

/// The version of burn this crate pins (Cargo.toml), for the report.
pub const BURN_VERSION: &str = "0.22.1";

/// Pretraining keys that compare sets itself.
const OWN_KEYS: &[(&str, &str)] = &[
    ("task", "--tasks"),
    ("data", "--data"),
    ("steps", "--budget"),
    ("max_minutes", "--minutes"),
];

pub fn run(req: &CompareRequest) -> Result<CompareOutcome> {
    let t0 = Instant::now();
    let started = utc_now();
    for set in &req.pretrain_sets {
        let key = set.split('=').next().unwrap_or("").trim();
        if let Some((_, flag)) = OWN_KEYS.iter().find(|(k, _)| *k == key) {
            return Err(Error::Usage(format!(
                "--set {set}: compare sets '{key}' itself; use {flag}"
            )));
        }
    }
    if req.budget == 0 {
        return Err(Error::Usage("--budget must be at least 1 step".into()));
    }
    if !(req.minutes >= 0.0 && req.minutes.is_finite()) {
        return Err(Error::Usage(format!(
            "--minutes must be a number of minutes ≥ 0 (0 = no time budget), found {}",
            req.minutes
        )));
    }
    if req.seeds == 0 {
        return Err(Error::Usage("--seeds must be at least 1".into()));
    }
    let kind = Kind::of_data(&req.data);
    let task_names = plan::parse_tasks(req.tasks.as_deref().unwrap_or(kind.default_tasks()), kind)?;
    let labels = plan::parse_labels(
        req.labels_per_class
            .as_deref()
            .unwrap_or(kind.default_labels()),
    )?;
    let protocols = plan::parse_protocols(&req.protocols)?;
    let job = match kind {
        Kind::Image => image_job(req, &task_names)?,
        Kind::Text => Job::Text(text_compare::TextJob::new(req, &task_names)?),
    };
    let settings = Settings {
        kind,
        data: req.data.clone(),
        tasks: task_names,
        labels_per_class: labels,
        protocols,
        budget: req.budget,
        minutes: req.minutes,
        seeds: req.seeds,
        stages: plan::parse_stages(&req.stages, job.encoder_stages())?,
        encoder_stages: job.encoder_stages(),
        classes: job.classes(),
        pretrain_sets: req.pretrain_sets.clone(),
        transfer_sets: req.transfer_sets.clone(),
    };
    let out = &req.out;
    check_out_dir(out, &settings)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    write_atomic(
        &out.join("compare.json"),
        &serde_json::to_vec_pretty(&settings).expect("json"),
    )?;

    // Tasks that do not apply to this data are listed with the reason, not run.
    let skipped = job.skipped(req)?;
    write_atomic(
        &out.join("skipped.json"),
        &serde_json::to_vec_pretty(&skipped).expect("json"),
    )?;
    let skipped_names: Vec<String> = skipped.iter().map(|(t, _)| t.clone()).collect();
    let cells = plan::cells(&settings, &skipped_names);
    let todo: Vec<&Cell> = cells.iter().filter(|c| c.result(out).is_none()).collect();

    let bars = Bars::new(cells.len() as u64, (cells.len() - todo.len()) as u64, req);
    run_loop::install_ctrlc();
    let mut log = Invocation {
        command: req.command.clone(),
        pretext_version: env!("CARGO_PKG_VERSION").into(),
        burn_version: BURN_VERSION.into(),
        device: req.device_name.clone(),
        cpu: cpu_name(),
        started,
        wall_s: 0.0,
        pretrained: Vec::new(),
        cells_run: 0,
        cells_total: cells.len(),
        interrupted: false,
    };

    let mut interrupted = false;
    let runnable: Vec<&String> = settings
        .tasks
        .iter()
        .filter(|t| !skipped_names.contains(t))
        .collect();
    for (i, task) in runnable.iter().enumerate() {
        let dir = out.join("pretrain").join(task);
        if finished_pretraining(&dir).is_some() {
            continue;
        }
        bars.phase(&format!(
            "pretraining {task} ({}/{})",
            i + 1,
            runnable.len()
        ));
        let resume = dir.join("config.toml").exists() && latest_checkpoint(&dir)?.is_some();
        let summary = job.pretrain(task, &dir, resume, req)?;
        log.pretrained.push(task.to_string());
        bars.println(&format!(
            "pretrained {task}: {} steps in {}, final loss {:.4}",
            summary.steps_done,
            fmt_duration(std::time::Duration::from_secs_f64(summary.wall_s)),
            summary.final_loss
        ));
        if !summary.done() {
            interrupted = true;
            break;
        }
    }

    if !interrupted {
        for cell in &todo {
            if engine::interrupted() {
                interrupted = true;
                break;
            }
            bars.phase(&cell.describe());
            let t = Instant::now();
            let score = job.run_cell(cell, &settings, req)?;
            log.cells_run += 1;
            bars.cell_done(&format!(
                "{}: {} {score:.4} ({:.1}s)",
                cell.describe(),
                kind.metric(),
                t.elapsed().as_secs_f64()
            ));
        }
    }
    bars.finish();
    log.interrupted = interrupted;
    log.wall_s = t0.elapsed().as_secs_f64();
    append_log(out, &log)?;
    let (report_html, report_md) = report::build(out)?;
    Ok(CompareOutcome {
        report_html,
        report_md,
        cells_run: log.cells_run,
        cells_total: cells.len(),
        skipped,
        interrupted,
    })
}

/// What differs between an image and a text compare: how the tasks pretrain and how a cell is
/// evaluated. (One value per compare, so the variants' size difference is immaterial.)
#[allow(clippy::large_enum_variant)]
enum Job {
    Image(ImageJob),
    Text(text_compare::TextJob),
}

struct ImageJob {
    configs: Vec<PretrainConfig>,
    /// The data pretraining sees (`limit` honoured) and the data transfer sees (all of it).
    pre_data: Dataset,
    full_data: Dataset,
    tcfg: TransferConfig,
    input: InputSpec,
    encoder_stages: usize,
}

impl Job {
    fn encoder_stages(&self) -> usize {
        match self {
            Job::Image(j) => j.encoder_stages,
            Job::Text(j) => j.encoder_stages(),
        }
    }

    fn classes(&self) -> usize {
        match self {
            Job::Image(j) => classes(&j.full_data),
            Job::Text(j) => j.classes(),
        }
    }

    /// (task, why) for the tasks that do not apply to the data.
    fn skipped(&self, req: &CompareRequest) -> Result<Vec<(String, String)>> {
        let Job::Image(j) = self else {
            return Ok(Vec::new());
        };
        let mut skipped = Vec::new();
        for cfg in &j.configs {
            if let Some(reason) = not_applicable(cfg, &j.input, &req.device, &req.pretrain_sets)? {
                skipped.push((cfg.task.clone(), reason));
            }
        }
        Ok(skipped)
    }

    fn pretrain(
        &self,
        task: &str,
        dir: &Path,
        resume: bool,
        req: &CompareRequest,
    ) -> Result<PretrainSummary> {
        match self {
            Job::Image(j) => {
                let cfg = j
                    .configs
                    .iter()
                    .find(|c| c.task == task)
                    .expect("a config per task");
                pretrain::pretrain(PretrainRequest {
                    config: cfg.clone(),
                    out: dir.to_path_buf(),
                    device: req.device.clone(),
                    resume,
                    dataset: Some(j.pre_data.clone()),
                    skip_bad: false,
                    stop_after: None,
                    quiet: req.quiet,
                })
            }
            Job::Text(j) => j.pretrain(task, dir, resume, req),
        }
    }

    /// Evaluate one cell and write its JSON; returns its score.
    fn run_cell(&self, cell: &Cell, settings: &Settings, req: &CompareRequest) -> Result<f64> {
        match self {
            Job::Image(j) => run_image_cell(cell, settings, j, req),
            Job::Text(j) => j.run_cell(cell, settings, req),
        }
    }
}

fn image_job(req: &CompareRequest, task_names: &[String]) -> Result<Job> {
    let configs: Vec<PretrainConfig> = task_names
        .iter()
        .map(|t| pretrain_config(t, req))
        .collect::<Result<_>>()?;
    let tcfg: TransferConfig = config::resolve(None, &req.transfer_sets, &[])?;
    if tcfg.stage != 0 {
        return Err(Error::Usage(
            "--transfer-set stage=…: compare chooses the stages itself; use --stages".into(),
        ));
    }
    // The data: pretraining honours `limit`, transfer always sees all of it.
    let base = &configs[0];
    let pre_data = pretrain::open_dataset(base, false)?;
    let full_data = if base.limit > 0 {
        pretrain::open_dataset(
            &PretrainConfig {
                limit: 0,
                ..base.clone()
            },
            false,
        )?
    } else {
        pre_data.clone()
    };
    if full_data.train.labels.is_none() {
        return Err(Error::Usage(format!(
            "{}: the training images have no labels, so there is nothing to compare on",
            full_data.name
        )));
    }
    let input = InputSpec::from_images(&pre_data.train)?;
    let spec = base.backbone_spec(input.channels);
    let encoder_stages = spec.init(&req.device).stages();
    Ok(Job::Image(ImageJob {
        configs,
        pre_data,
        full_data,
        tcfg,
        input,
        encoder_stages,
    }))
}

/// The pretraining config of one task: the user's `--set`s, then what compare owns.
fn pretrain_config(task: &str, req: &CompareRequest) -> Result<PretrainConfig> {
    let cfg: PretrainConfig = config::resolve(None, &own_sets(task, req), &tasks::image_names())?;
    cfg.validate()?;
    Ok(cfg)
}

/// The user's `--set`s followed by the keys compare owns (task, data, steps).
fn own_sets(task: &str, req: &CompareRequest) -> Vec<String> {
    let mut sets = req.pretrain_sets.clone();
    sets.push(format!("task={task:?}"));
    sets.push(format!("data={:?}", req.data));
    sets.push(format!("steps={}", req.budget));
    if req.minutes > 0.0 {
        sets.push(format!("max_minutes={}", req.minutes));
    }
    sets
}

/// Build the task once to see whether it applies to this data: a usage or config error from the
/// task's constructor (e.g. colorization of grayscale images) means "skip, with this reason" —
/// unless the user set keys of that task, whose mistakes are errors.
fn not_applicable(
    cfg: &PretrainConfig,
    input: &InputSpec,
    device: &Device,
    pretrain_sets: &[String],
) -> Result<Option<String>> {
    let Some(tasks::Build::Image(build)) = tasks::find(&cfg.task).map(|e| e.build) else {
        unreachable!("parse_tasks admits image tasks only");
    };
    let ctx = TaskContext {
        config: cfg,
        input,
        device: device.clone().autodiff(),
    };
    match build(&ctx) {
        Ok(_) => Ok(None),
        Err(e) if e.exit_code() == 2 => {
            let own = format!("{}.", cfg.task);
            if pretrain_sets.iter().any(|s| s.starts_with(&own)) {
                Err(e)
            } else {
                Ok(Some(e.to_string()))
            }
        }
        Err(e) => Err(e),
    }
}

/// The summary of a pretraining run that finished its budget (of steps, or of time).
pub fn finished_pretraining(dir: &Path) -> Option<PretrainSummary> {
    let bytes = std::fs::read(dir.join("summary.json")).ok()?;
    let s: PretrainSummary = serde_json::from_slice(&bytes).ok()?;
    (s.done() && dir.join("encoder.safetensors").exists()).then_some(s)
}

/// Run one image cell and write its JSON; returns the accuracy.
fn run_image_cell(
    cell: &Cell,
    settings: &Settings,
    job: &ImageJob,
    req: &CompareRequest,
) -> Result<f64> {
    // Baselines get the pretraining runs' backbone; seeds draw the labels (and random weights).
    let pcfg = &job.configs[0];
    debug_assert_eq!(pcfg.task, settings.tasks[0]);
    let config = TransferConfig {
        seed: cell.seed,
        stage: cell.stage,
        backbone: pcfg.backbone,
        width: pcfg.width(),
        patch_size: pcfg.patch_size,
        image_size: pcfg.image_size,
        ..job.tcfg.clone()
    };
    let request = TransferRequest {
        from: cell_source(cell, req),
        protocol: cell.protocol,
        labels_per_class: cell.labels,
        config,
        out: Some(cell.dir(&req.out)),
        device: req.device.clone(),
        quiet: req.quiet,
    };
    Ok(transfer::transfer(&job.full_data, &request)?.0.accuracy as f64)
}

/// Where a cell's encoder comes from.
fn cell_source(cell: &Cell, req: &CompareRequest) -> Source {
    match &cell.encoder {
        Encoder::Task(t) => Source::Run(req.out.join("pretrain").join(t)),
        Encoder::Random => Source::Random,
        Encoder::Scratch => Source::Scratch,
    }
}

/// Refuse an OUT directory that holds a compare with settings that would make its results mean
/// something else, or that holds something other than a compare.
fn check_out_dir(out: &Path, settings: &Settings) -> Result<()> {
    let path = out.join("compare.json");
    if path.exists() {
        let earlier: Settings = std::fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{}: unreadable compare.json; delete {} to start over",
                    path.display(),
                    out.display()
                ))
            })?;
        let diff = settings.differences(&earlier);
        if !diff.is_empty() {
            return Err(Error::Usage(format!(
                "{} holds a compare with other settings: {}; rerun with its settings (see {}) to continue it, choose another --out, or delete it to start over",
                out.display(),
                diff.join(", "),
                path.display()
            )));
        }
    } else if out.exists()
        && std::fs::read_dir(out)
            .map_err(|e| Error::io(out, e))?
            .next()
            .is_some()
    {
        return Err(Error::Usage(format!(
            "{} exists and does not hold a compare (no compare.json); choose another --out",
            out.display()
        )));
    }
    Ok(())
}

fn classes(ds: &Dataset) -> usize {
    let from_labels = ds
        .train
        .labels
        .as_ref()
        .and_then(|l| l.iter().max())
        .map_or(0, |&m| m as usize + 1);
    ds.classes.len().max(from_labels)
}

fn append_log(out: &Path, inv: &Invocation) -> Result<()> {
    use std::io::Write;
    let path = out.join("log.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    writeln!(f, "{}", serde_json::to_string(inv).expect("json")).map_err(|e| Error::io(&path, e))
}

/// The CPU model from /proc/cpuinfo and the core count ("unknown CPU" elsewhere).
fn cpu_name() -> String {
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{model}, {cores} cores")
}

/// Now as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format_utc(secs)
}

/// Seconds since 1970 as a UTC date and time (the civil-from-days algorithm).
pub fn format_utc(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// The overall bar (cells done / total, ETA) with the per-run bars drawn below it on a terminal;
/// plain lines otherwise; nothing when quiet.
struct Bars {
    bar: Option<ProgressBar>,
    plain: bool,
    total: u64,
    done: std::cell::Cell<u64>,
    t0: Instant,
    done_at_start: u64,
}

impl Bars {
    fn new(total: u64, done: u64, req: &CompareRequest) -> Self {
        let terminal = std::io::stdout().is_terminal() && !req.quiet;
        let bar = terminal.then(|| {
            let group = MultiProgress::new();
            let bar = group.add(ProgressBar::new(total));
            bar.set_style(
                ProgressStyle::with_template(
                    "compare [{bar:30}] {pos}/{len} cells, eta {eta} | {msg}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            bar.set_position(done);
            set_group(Some(group));
            bar
        });
        let s = Self {
            bar,
            plain: !terminal && !req.quiet,
            total,
            done: std::cell::Cell::new(done),
            t0: Instant::now(),
            done_at_start: done,
        };
        if s.plain {
            println!("compare: {done}/{total} cells already on disk");
        }
        s
    }

    fn phase(&self, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg.to_string());
        }
    }

    fn cell_done(&self, line: &str) {
        let done = self.done.get() + 1;
        self.done.set(done);
        if let Some(bar) = &self.bar {
            bar.inc(1);
        } else if self.plain {
            let run = (done - self.done_at_start) as f64;
            let eta = self.t0.elapsed().as_secs_f64() / run * (self.total - done) as f64;
            println!(
                "compare [{done}/{}] {line} eta {}",
                self.total,
                fmt_duration(std::time::Duration::from_secs_f64(eta))
            );
        }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None if self.plain => println!("{line}"),
            None => {}
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
            set_group(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_795_000_000), "2026-11-18 11:06:40 UTC");
    }

    #[test]
    fn a_task_that_does_not_fit_the_data_is_skipped_with_the_reason() {
        let cfg = PretrainConfig {
            task: "rotation".into(),
            width: 8,
            ..Default::default()
        };
        let square = InputSpec::square(1, 28, 0.5, 0.25);
        let wide = InputSpec {
            width: 40,
            ..square.clone()
        };
        let device = Device::flex();
        assert_eq!(not_applicable(&cfg, &square, &device, &[]).unwrap(), None);
        let reason = not_applicable(&cfg, &wide, &device, &[]).unwrap().unwrap();
        assert!(reason.contains("square"), "{reason}");
        // A mistake in the task's own keys is the user's to fix, not a reason to skip.
        let bad = PretrainConfig {
            sections: [(
                "rotation".to_string(),
                toml::toml! { crop_scale_min = 2.0 }.into(),
            )]
            .into(),
            ..cfg.clone()
        };
        let sets = ["rotation.crop_scale_min=2.0".to_string()];
        assert!(not_applicable(&bad, &square, &device, &sets).is_err());
    }

    #[test]
    fn an_out_dir_with_other_settings_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("cmp");
        let s = plan::example_settings();
        check_out_dir(&out, &s).unwrap();
        std::fs::create_dir_all(&out).unwrap();
        std::fs::write(out.join("compare.json"), serde_json::to_vec(&s).unwrap()).unwrap();
        check_out_dir(&out, &s).unwrap();
        let mut other = s.clone();
        other.budget = 99;
        let e = check_out_dir(&out, &other).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("--budget 99 (was 4)"), "{e}");
        let stranger = dir.path().join("stranger");
        std::fs::create_dir_all(&stranger).unwrap();
        std::fs::write(stranger.join("x"), "x").unwrap();
        assert!(check_out_dir(&stranger, &s).is_err());
    }
}
