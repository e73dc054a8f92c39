//! `pretext bench`: training throughput of every pretext task next to the same model in PyTorch.
//!
//! For each task one training step is driven through the engine's step of the task (the
//! registry's `build`, the task's `make_batch`, `engine::Bound`): forward, backward and AdamW, and
//! for the GAN tasks (superres, inpaint) the discriminator step and the generator step, exactly
//! as `pretext pretrain` runs it. The batch is fixed (made once by the task's `make_batch` from the
//! built-in Fashion-MNIST images; colorize gets them tinted into 3×32×32 colour images) and is
//! written to disk, so `bench/reference.py` trains the same architecture on the very same numbers.
//! Each side runs in its own child process, so peak memory is its own. The loader column runs the
//! task's `make_batch` through the real [`Loader`] with the default worker count, to show data is
//! not the bottleneck.
//!
//! Adding a model family (e.g. text tasks) is one branch in [`measure_task`] plus one step
//! function in `bench/reference.py`'s `TASKS`.

pub mod generation_speed;
pub mod layout;
pub mod measure;

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::BackboneKind;
use crate::tasks;
pub use measure::{bench_images, measure_task, text_spec, tinted};

/// The image tasks `--tasks` measures by default.
pub const IMAGE_TASKS: &[&str] = &[
    "rotation", "context", "jigsaw", "colorize", "superres", "inpaint",
];

/// The step number the bench steps carry: past every task's content-only warm-up, so the GAN
/// tasks run their full steady-state step (the generator's adversarial term included).
const STEADY_STATE_INDEX: u64 = 1_000_000;

/// Learning rate of the timed steps (the default peak rate).
const LR: f64 = 2e-3;

pub struct BenchOptions {
    pub tasks: Vec<String>,
    pub backbone: String,
    /// Images drawn from the data per step (a task may expand each into several inputs).
    pub batch_size: usize,
    pub steps: usize,
    pub python: String,
    pub device: String,
    /// Device for the PyTorch reference; default `cpu` for `--device cpu`, else `cuda`.
    pub torch_device: Option<String>,
    /// Compute threads of both sides: burn-flex's rayon pool (RAYON_NUM_THREADS of the child) and
    /// torch.set_num_threads; 0 = one per core.
    pub threads: usize,
    /// pretext's model replicas (0 = one per thread, as `pretrain`).
    pub replicas: usize,
    /// Seconds the loader is run per task.
    pub loader_seconds: f64,
    /// Also write the rows as JSON lines here.
    pub json: Option<PathBuf>,
    /// Internal: measure this task in this process, print one JSON line.
    pub child: Option<String>,
    /// Internal (child): write the batch for the reference here.
    pub dump: Option<PathBuf>,
}

/// One side's measurement of one task, as a child prints it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Measurement {
    pub task: String,
    pub backbone: String,
    /// Images drawn from the data per step.
    pub batch: usize,
    /// Network inputs per step and their shape [c, h, w] (rotation: 4 per image, context and
    /// jigsaw: 9 patches or tiles per image).
    pub inputs: usize,
    pub input_shape: [usize; 3],
    pub params: usize,
    /// Images (drawn from the data) per second: batch / median step time.
    pub items_per_s: f64,
    pub step_ms_median: f64,
    pub step_ms_mean: f64,
    /// CPU time (user + system, all threads) per timed step: less sensitive than wall time to
    /// other processes on a shared machine.
    #[serde(default)]
    pub cpu_ms_per_step: f64,
    pub peak_rss_mb: f64,
    /// Images per second the real loader delivers with `make_batch` and the default workers.
    #[serde(default)]
    pub loader_items_per_s: f64,
    #[serde(default)]
    pub loader_workers: usize,
    #[serde(default)]
    pub threads: usize,
    /// Model replicas stepping at once (1 = none).
    #[serde(default)]
    pub replicas: usize,
}

/// A row of the table: pretext's measurement and PyTorch's (or why there is none).
#[derive(Debug, Serialize)]
struct Row {
    ours: Measurement,
    torch: std::result::Result<serde_json::Value, String>,
}

pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass and reads nothing else.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) } != 0 {
        return 0.0;
    }
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 * 1e-6;
    t(u.ru_utime) + t(u.ru_stime)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn threads(opts: &BenchOptions) -> usize {
    if opts.threads == 0 {
        cores()
    } else {
        opts.threads
    }
}

pub fn run(opts: &BenchOptions) -> Result<()> {
    if let Some(name) = &opts.child {
        let m = measure_task(name, opts)?;
        println!("{}", serde_json::to_string(&m).expect("json"));
        return Ok(());
    }
    BackboneKind::parse(&opts.backbone).ok_or_else(|| {
        Error::Usage(format!(
            "--backbone: unknown backbone '{}'; expected one of {}",
            opts.backbone,
            BackboneKind::NAMES
        ))
    })?;
    for t in &opts.tasks {
        if tasks::find(t).is_none() {
            return Err(Error::Usage(format!(
                "--tasks: unknown task '{t}'; known tasks: {}, {}",
                tasks::image_names().join(", "),
                tasks::text_names().join(", ")
            )));
        }
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("current executable", e))?;
    let scratch = std::env::temp_dir().join(format!("pretext-bench-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| Error::io(&scratch, e))?;
    let torch_device = opts
        .torch_device
        .clone()
        .unwrap_or_else(|| if opts.device == "cpu" { "cpu" } else { "cuda" }.to_string());
    eprintln!(
        "bench: {} task(s), backbone {}, {} images per step, {} timed steps (after 2 warm-up), \
         pretext on {}, PyTorch on {torch_device}, {} compute threads on {} cores ({})",
        opts.tasks.len(),
        opts.backbone,
        opts.batch_size,
        opts.steps,
        opts.device,
        threads(opts),
        cores(),
        crate::platform::device::cpu_simd()
    );
    if cfg!(debug_assertions) {
        eprintln!(
            "bench: this binary is a dev-profile build (no --release): pretext's own code is \
             less optimised than in the binary users run; `cargo run --release -- bench` for \
             the numbers to publish"
        );
    }
    let mut rows = Vec::new();
    for name in &opts.tasks {
        let dump = scratch.join(name);
        let ours = run_child(&exe, name, &dump, opts)?;
        let torch = run_reference(&opts.python, &dump, opts, &torch_device);
        eprintln!(
            "  {name}: pretext {:.1} items/s, PyTorch {}",
            ours.items_per_s,
            match &torch {
                Ok(t) => format!("{:.1} items/s", t["items_per_s"].as_f64().unwrap_or(0.0)),
                Err(e) => e.clone(),
            }
        );
        rows.push(Row { ours, torch });
    }
    let _ = std::fs::remove_dir_all(&scratch);
    println!(
        "{}",
        markdown_table(&rows, &opts.device, &torch_device, threads(opts))
    );
    if let Some(path) = &opts.json {
        let text: String = rows
            .iter()
            .map(|r| serde_json::to_string(r).expect("json") + "\n")
            .collect();
        std::fs::write(path, text).map_err(|e| Error::io(path, e))?;
    }
    Ok(())
}

fn run_child(exe: &Path, name: &str, dump: &Path, opts: &BenchOptions) -> Result<Measurement> {
    let out = Command::new(exe)
        .args(["bench", "--child", name, "--backbone", &opts.backbone])
        .args(["--batch-size", &opts.batch_size.to_string()])
        .args(["--steps", &opts.steps.to_string()])
        .args(["--device", &opts.device])
        .args(["--loader-seconds", &opts.loader_seconds.to_string()])
        .args(["--replicas", &opts.replicas.to_string()])
        .arg("--dump")
        .arg(dump)
        .env("RAYON_NUM_THREADS", threads(opts).to_string())
        .output()
        .map_err(|e| Error::io(exe, e))?;
    serde_json::from_slice(last_line(&out.stdout)).map_err(|_| {
        Error::Usage(format!(
            "bench child for {name} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    })
}

/// Runs `bench/reference.py` on the dumped batch; Err says why there is no number.
fn run_reference(
    python: &str,
    dump: &Path,
    opts: &BenchOptions,
    device: &str,
) -> std::result::Result<serde_json::Value, String> {
    let text = dump
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(tasks::find_text);
    let mut cmd = Command::new(python);
    if let Some(entry) = text {
        let s = text_spec(entry.causal());
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/lm_reference.py");
        cmd.arg(script).args(["--task", entry.name]).args([
            format!("--vocab={}", s.vocab),
            format!("--d-model={}", s.d_model),
            format!("--layers={}", s.layers),
            format!("--heads={}", s.heads),
            format!("--d-ff={}", s.d_ff),
            format!("--max-len={}", s.max_len),
            format!("--seq-len={}", s.max_len),
            format!("--batch-size={}", opts.batch_size),
            format!("--dropout={}", s.dropout),
        ]);
    } else {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/bench/reference.py");
        let script =
            std::env::var("PRETEXT_BENCH_REFERENCE").unwrap_or_else(|_| script.to_string());
        cmd.arg(script).arg("--batch-dir").arg(dump);
    }
    let out = cmd
        .args(["--steps", &opts.steps.to_string()])
        .args(["--device", device])
        .args(["--threads", &threads(opts).to_string()])
        .output()
        .map_err(|e| format!("not installed ({python}: {e})"))?;
    let value: Option<serde_json::Value> = serde_json::from_slice(last_line(&out.stdout)).ok();
    match value {
        Some(v) if out.status.success() => Ok(v),
        Some(v) if v["error"] == "torch not installed" => Err("not installed".into()),
        _ => Err(format!(
            "failed: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        )),
    }
}

fn last_line(bytes: &[u8]) -> &[u8] {
    let text = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    match text.iter().rposition(|&b| b == b'\n') {
        Some(i) => &text[i + 1..],
        None => text,
    }
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// The build this binary is, as the table's header names it.
const BUILD: &str = if cfg!(debug_assertions) {
    "dev-profile build"
} else {
    "release build"
};

fn markdown_table(rows: &[Row], device: &str, torch_device: &str, threads: usize) -> String {
    let build = BUILD;
    let simd = crate::platform::device::cpu_simd();
    let mut s = format!(
        "items = images drawn from the data per second (median step); one step = the task's own \
         training step (forward, backward, AdamW; GAN tasks: discriminator and generator steps), \
         fp32, pretext on {device} ({build}), PyTorch on {torch_device}, {threads} compute thread(s) \
         each, CPU with {simd}; ratio = pretext/PyTorch throughput by wall time, and by CPU time per step (PyTorch CPU s / \
         pretext CPU s; steadier on a shared machine)\n\n\
         | task | backbone | batch (inputs per step) | params pretext / PyTorch | pretext replicas | pretext items/s | \
         PyTorch items/s | ratio | ratio by CPU time | pretext peak MB | PyTorch peak MB | loader items/s |\n\
         |---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    let mut notes = Vec::new();
    for r in rows {
        let o = &r.ours;
        let [c, h, w] = o.input_shape;
        let (params, ts, ratio, cpu_ratio, tm) = match &r.torch {
            Ok(t) => {
                let tp = t["params"].as_u64().unwrap_or(0) as usize;
                let its = t["items_per_s"].as_f64().unwrap_or(0.0);
                let p = if tp == o.params {
                    format!("{} / same", thousands(o.params))
                } else {
                    notes.push(format!(
                        "**PARAMETER MISMATCH** in {}: pretext {} vs PyTorch {} — the models differ",
                        o.task, o.params, tp
                    ));
                    format!("{} / **{}** ≠", thousands(o.params), thousands(tp))
                };
                (
                    p,
                    format!("{its:.1}"),
                    format!("{:.2}×", o.items_per_s / its.max(1e-9)),
                    match t["cpu_ms_per_step"].as_f64() {
                        Some(c) if o.cpu_ms_per_step > 0.0 => {
                            format!("{:.2}×", c / o.cpu_ms_per_step)
                        }
                        _ => "-".into(),
                    },
                    format!("{:.0}", t["peak_rss_mb"].as_f64().unwrap_or(0.0)),
                )
            }
            Err(e) => (
                format!("{} / -", thousands(o.params)),
                e.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
            ),
        };
        if let Some(entry) = tasks::find_text(&o.task) {
            let spec = text_spec(entry.causal());
            // The masked model's head runs at its chosen positions only (19 of 128).
            let scored = if entry.causal() {
                1.0
            } else {
                let chosen =
                    crate::tasks::masked_lm::MaskedLmConfig::default().chosen(spec.max_len);
                chosen as f64 / spec.max_len as f64
            };
            let flops = 3.0 * spec.flops_per_token(spec.max_len, scored);
            let gflops = |tok_s: f64| flops * tok_s / 1e9;
            let torch = r
                .torch
                .as_ref()
                .ok()
                .and_then(|t| t["items_per_s"].as_f64())
                .map_or(String::new(), |t| {
                    format!(", PyTorch {t:.0} tokens/s = {:.1} GFLOP/s", gflops(t))
                });
            notes.push(format!(
                "{}: items are tokens ({} sequences × {} tokens per step); ~{:.1} MFLOP per token per \
                 training step (3 × forward matmuls) → pretext {:.0} tokens/s = {:.1} GFLOP/s{torch}",
                o.task,
                o.batch,
                spec.max_len,
                flops / 1e6,
                o.items_per_s,
                gflops(o.items_per_s)
            ));
        }
        let loader = if o.loader_items_per_s < o.items_per_s {
            notes.push(format!(
                "**LOADER TOO SLOW** for {}: {:.0} img/s delivered < {:.0} img/s trained",
                o.task, o.loader_items_per_s, o.items_per_s
            ));
            format!("**{:.0}** (slower than training)", o.loader_items_per_s)
        } else {
            format!("{:.0}", o.loader_items_per_s)
        };
        s += &format!(
            "| {} | {} | {} ({}×{c}×{h}×{w}) | {params} | {} | {:.1} | {ts} | {ratio} | {cpu_ratio} | {:.0} | {tm} | {loader} |\n",
            o.task, o.backbone, o.batch, o.inputs, o.replicas.max(1), o.items_per_s, o.peak_rss_mb
        );
    }
    for n in notes {
        s += &format!("\n{n}\n");
    }
    s
}

/// `pretext bench` from the command line.
pub fn command(a: crate::commands::cli::BenchArgs) -> Result<()> {
    if a.generate {
        return generation_speed::run(&generation_speed::GenerateBenchOptions {
            device: a.device,
            threads: a.threads,
        });
    }
    run(&BenchOptions {
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_tiny_task_gives_a_well_formed_measurement() {
        let dir = tempfile::tempdir().unwrap();
        let opts = BenchOptions {
            tasks: vec!["rotation".into()],
            backbone: "convnet".into(),
            batch_size: 2,
            steps: 1,
            python: "python3".into(),
            device: "cpu".into(),
            torch_device: None,
            threads: 0,
            replicas: 0,
            loader_seconds: 0.05,
            json: None,
            child: Some("rotation".into()),
            dump: Some(dir.path().join("rotation")),
        };
        let m = measure_task("rotation", &opts).unwrap();
        assert_eq!((m.batch, m.inputs, m.input_shape), (2, 8, [1, 28, 28]));
        assert!(m.params > 0 && m.items_per_s > 0.0 && m.peak_rss_mb > 0.0);
        assert!(m.loader_items_per_s > 0.0);
        let meta: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.path().join("rotation/batch.json")).unwrap())
                .unwrap();
        assert_eq!(meta["params"], m.params);
        let bytes = std::fs::read(dir.path().join("rotation/images.f32")).unwrap();
        assert_eq!(bytes.len(), 8 * 28 * 28 * 4);
    }

    #[test]
    fn tinted_images_are_colour_and_32_square() {
        let set = bench_images("colorize", 3).unwrap();
        assert_eq!((set.n, set.channels, set.height, set.width), (3, 3, 32, 32));
        let px = set.image(0).unwrap();
        let plane = 32 * 32;
        assert!((0..plane).any(|p| px[p] != px[plane + p] || px[p] != px[2 * plane + p]));
    }
}
