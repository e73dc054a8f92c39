//! Helpers the integration tests share: running the binary, the shared data, small in-process
//! runs on the built-in Fashion-MNIST slice. (`mod common;` in a test file; not every file uses
//! every helper.)
#![allow(dead_code)]

use std::process::{Command, Output};

use burn::prelude::Device;
use pretext::config::{resolve, PretrainConfig};
use pretext::data::Dataset;
use pretext::input::InputSpec;
use pretext::tasks::{self, ImageTrainer, TaskContext};

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
    let mut ds = pretext::demo::builtin_dataset().unwrap();
    ds.train = ds.train.take(n);
    ds
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
    pretext::device::seeded(&device, 0, || {
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
