//! Helpers the integration tests share: running the binary, the shared data, small in-process
//! runs on the built-in Fashion-MNIST slice. (`mod common;` in a test file; not every file uses
//! every helper.)
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use burn::prelude::Device;
use pretext::config::{resolve, PretrainConfig};
use pretext::data::Dataset;
use pretext::nn::input::InputSpec;
use pretext::tasks::{self, ImageTrainer, TaskContext};

/// A tiny causal/masked language model for the binary's `--set`s: 300 tokens, 2 layers × 32
/// wide, 2 heads, windows of 32 tokens, batches of 8.
pub const TINY_LM: &[&str] = &[
    "--set",
    "vocab=300",
    "--set",
    "d_model=32",
    "--set",
    "layers=2",
    "--set",
    "heads=2",
    "--set",
    "seq_len=32",
    "--set",
    "batch_size=8",
];

/// The binary with `args`.
pub fn pretext(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(args)
        .output()
        .expect("run pretext")
}

/// The binary with `args`, which must succeed; its stdout.
pub fn ok(args: &[&str]) -> String {
    let out = pretext(args);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "pretext {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A check whose tool (python3, a Python module, mpirun) this machine lacks: under `CI=true`
/// the test fails, since `.ci/run` installs every tool and a missing one is a broken install;
/// elsewhere the check is skipped with the reason.
pub fn missing_tool(what: &str, why: &str) {
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("{what}: {why}; CI=true needs it (.ci/run installs it)");
    }
    eprintln!("skipped {what}: {why}");
}

/// A check script in tests/py (its helpers beside it: tests/py/skips.py).
pub fn py_script(name: &str) -> String {
    format!("{}/tests/py/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A path under ../shared/data.
pub fn shared_data(what: &str) -> String {
    format!("{}/../shared/data/{what}", env!("CARGO_MANIFEST_DIR"))
}

/// In-process trainings of one test file run one at a time: burn's CPU backend shares one rayon
/// pool per process, and concurrent trainings were seen to change float results (bitwise resume
/// checks).
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The first `n` training images of the built-in Fashion-MNIST slice.
pub fn small_dataset(n: usize) -> Dataset {
    let mut ds = pretext::commands::demo::builtin_dataset().unwrap();
    ds.train = ds.train.take(n);
    ds
}

/// A small run (the [`config`] above plus `sets`) on the first 96 built-in images in `dir`,
/// quietly: stopped after `stop_after` steps, or resumed from `dir`.
pub fn small_run(
    dir: &Path,
    sets: &[&str],
    stop_after: Option<u64>,
    resume: bool,
) -> pretext::engine::PretrainSummary {
    pretext::commands::pretrain::pretrain(pretext::commands::pretrain::PretrainRequest {
        config: config(sets),
        out: dir.to_path_buf(),
        device: Device::flex(),
        resume,
        dataset: Some(small_dataset(96)),
        skip_bad: false,
        stop_after,
        quiet: true,
    })
    .unwrap()
}

/// A small image-run config (width 8, batches of 16, a checkpoint every 4 steps) plus `sets`.
pub fn config(sets: &[&str]) -> PretrainConfig {
    let mut all = vec![
        "width=8",
        "batch_size=16",
        "warmup_steps=2",
        "log_every=1",
        "checkpoint_every=4",
        "data=\"builtin:fashion-mnist-demo\"",
    ];
    all.extend_from_slice(sets);
    let all: Vec<String> = all.into_iter().map(String::from).collect();
    resolve(None, &all, &tasks::image_names()).unwrap()
}

/// The image task `task` built from the registry, bound to its model and optimisers.
pub fn build(task: &str, cfg: &PretrainConfig, input: &InputSpec) -> Box<dyn ImageTrainer> {
    let device = Device::flex().autodiff();
    let tasks::Build::Image(build) = tasks::find(task).unwrap().build else {
        panic!("{task} is not an image task");
    };
    pretext::platform::device::seeded(&device, 0, || {
        build(&TaskContext {
            config: cfg,
            input,
            device: device.clone(),
        })
    })
    .unwrap()
}

/// The rows of a run's `metrics.jsonl` written by training steps (those with a loss; not the
/// k-NN monitor's or a language model's validation-only rows).
pub fn step_rows(run: &std::path::Path) -> Vec<serde_json::Value> {
    pretext::engine::metrics::read(&run.join("metrics.jsonl"))
        .unwrap()
        .into_iter()
        .filter(|r| r.get("loss").is_some())
        .collect()
}

/// The first `bytes` of Austen's novels (../shared/data/text/austen.txt.gz) as a plain .txt file
/// in `dir`.
pub fn austen_slice(dir: &std::path::Path, bytes: usize) -> std::path::PathBuf {
    use std::io::Read;
    let mut text = String::new();
    flate2::read::GzDecoder::new(
        std::fs::File::open(shared_data("text/austen.txt.gz")).expect("austen.txt.gz"),
    )
    .read_to_string(&mut text)
    .unwrap();
    let mut end = bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let path = dir.join("austen.txt");
    std::fs::write(&path, &text[..end]).unwrap();
    path
}

/// Where Chromium is, installing it with tests/install-chromium.sh when missing; None (with the
/// reason printed, or a failure under `CI=true`: see [`missing_tool`]) when that is not possible.
pub fn chromium() -> Option<PathBuf> {
    let find = || {
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
    };
    if let Some(p) = find() {
        return Some(p);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/install-chromium.sh");
    let why = match Command::new("sh").arg(&script).output() {
        Ok(o) if o.status.success() => match find() {
            Some(p) => return Some(p),
            None => "install-chromium.sh succeeded but no chromium binary was found".to_string(),
        },
        Ok(o) => format!(
            "chromium is missing and could not be installed: {}{}",
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => format!("could not run {}: {e}", script.display()),
    };
    missing_tool("the headless-Chromium check of the report", &why);
    None
}

/// Load a compare report in headless Chromium: its DOM must hold the results table and the
/// label-efficiency plot, and a 1200×2000 screenshot (written to `shot`) must not be blank.
pub fn render_in_chromium(chromium: &Path, html: &Path, shot: &Path) {
    let url = format!("file://{}", html.display());
    let profile = shot.with_extension("profile");
    let common = [
        "--headless".to_string(),
        "--no-sandbox".to_string(),
        "--disable-gpu".to_string(),
        format!("--user-data-dir={}", profile.display()),
    ];
    let o = Command::new(chromium)
        .args(&common)
        .arg("--dump-dom")
        .arg(&url)
        .output()
        .unwrap();
    let dom = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && dom.contains("id=\"results\"") && dom.contains("Label efficiency"),
        "chromium --dump-dom: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let o = Command::new(chromium)
        .args(&common)
        .arg(format!("--screenshot={}", shot.display()))
        .arg("--window-size=1200,2000")
        .arg(&url)
        .output()
        .unwrap();
    assert!(
        o.status.success() && shot.exists(),
        "chromium --screenshot: {}\n{}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    let img = image::open(shot).unwrap().to_luma8();
    assert_eq!(img.dimensions(), (1200, 2000));
    let n = img.pixels().count() as f64;
    let mean = img.pixels().map(|p| p.0[0] as f64).sum::<f64>() / n;
    let var = img
        .pixels()
        .map(|p| (p.0[0] as f64 - mean).powi(2))
        .sum::<f64>()
        / n;
    assert!(var > 100.0, "screenshot looks blank (variance {var:.1})");
}

/// `n` e-mails of every label from the shared SpamAssassin corpus (each cut to `chars`
/// characters), as `dir/mail.jsonl` in the corpus's own format.
pub fn mail_slice(dir: &Path, n: usize, chars: usize) -> PathBuf {
    use std::io::{BufRead, Write};
    let f = std::fs::File::open(shared_data("text/spamassassin.jsonl.gz")).unwrap();
    let mut by_label: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for line in std::io::BufReader::new(flate2::read::GzDecoder::new(f)).lines() {
        let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
        let label = v["label"].as_str().unwrap().to_string();
        let docs = by_label.entry(label.clone()).or_default();
        if docs.len() < n {
            let text: String = v["text"].as_str().unwrap().chars().take(chars).collect();
            docs.push(serde_json::json!({"text": text, "label": label}).to_string());
        }
    }
    let path = dir.join("mail.jsonl");
    let mut out = std::fs::File::create(&path).unwrap();
    for docs in by_label.values() {
        for d in docs {
            writeln!(out, "{d}").unwrap();
        }
    }
    path
}
