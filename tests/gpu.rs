//! The GPU path, tested without a GPU (issue 36): `--device wgpu` on whatever adapter wgpu finds
//! (in CI Mesa's software Vulkan, lavapipe) trains as the CPU does. Four kinds of step: a conv
//! task (rotation), a joint-embedding task (SimCLR), a GAN (super-resolution) and a language
//! model (causal LM). For each, a checkpoint written on the CPU is resumed on both devices, and
//! one written on wgpu is resumed on both: the two devices' losses from the same weights on the
//! same batches agree within [`TOLERANCE`], and both directions of the hand-over work.
//!
//! The first weights of a new run come from the device's own random generator, so a seed gives
//! other (equally random) weights on a GPU than on the CPU; that is why the comparison starts from
//! a checkpoint. Run with `cargo test --features wgpu --test gpu`; without an adapter the tests
//! are skipped with the reason, and fail under `CI=true`.
#![cfg(feature = "wgpu")]

mod common;

use std::path::Path;

use common::{austen_slice, missing_tool, ok, step_rows, TINY_LM};

/// Largest relative difference allowed between the CPU's and wgpu's loss at a step, both
/// continuing from the same checkpoint: the two backends sum in other orders (f32), and two
/// optimiser steps carry the difference on. Measured on lavapipe: at most 9.1e-7 (SimCLR).
const TOLERANCE: f64 = 1e-5;

/// Whether a wgpu adapter opens here; says why not (and fails under CI=true) when none does.
fn adapter() -> Option<String> {
    let out = common::pretext(&["devices"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    match stdout.lines().find(|l| l.starts_with("wgpu:")) {
        Some(line) if !line.contains("no GPU adapter") => Some(line.to_string()),
        line => {
            missing_tool(
                "the wgpu tests",
                &format!(
                    "no wgpu adapter ({}; Linux: apt-get install mesa-vulkan-drivers libvulkan1)",
                    line.unwrap_or("`pretext devices` printed no wgpu line")
                ),
            );
            None
        }
    }
}

/// `(step, loss)` of a run's training rows from `from` on.
fn losses(run: &Path, from: u64) -> Vec<(u64, f64)> {
    step_rows(run)
        .iter()
        .map(|r| (r["step"].as_u64().unwrap(), r["loss"].as_f64().unwrap()))
        .filter(|&(s, _)| s > from)
        .collect()
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

/// `pretext pretrain --resume run --device device --stop-after stop`.
fn resume(run: &Path, device: &str, stop: u64) -> String {
    ok(&[
        "pretrain",
        "--resume",
        run.to_str().unwrap(),
        "--device",
        device,
        "--stop-after",
        &stop.to_string(),
    ])
}

/// The run's first line names the GPU adapter, not the CPU.
fn on_wgpu(stdout: &str) {
    let line = stdout.lines().next().unwrap_or("");
    assert!(
        line.contains("training on ") && !line.contains("training on cpu"),
        "{stdout}"
    );
}

/// The two devices' losses after the same checkpoint agree within [`TOLERANCE`].
fn agree(what: &str, cpu: &[(u64, f64)], gpu: &[(u64, f64)]) -> f64 {
    assert_eq!(cpu.len(), 2, "{what}: cpu {cpu:?}");
    assert_eq!(
        cpu.iter().map(|r| r.0).collect::<Vec<_>>(),
        gpu.iter().map(|r| r.0).collect::<Vec<_>>(),
        "{what}: steps"
    );
    let mut worst = 0.0f64;
    for (&(step, a), &(_, b)) in cpu.iter().zip(gpu) {
        assert!(
            a.is_finite() && b.is_finite(),
            "{what} step {step}: {a} vs {b}"
        );
        let rel = (a - b).abs() / a.abs().max(1e-6);
        assert!(
            rel <= TOLERANCE,
            "{what} step {step}: cpu loss {a}, wgpu loss {b} (relative difference {rel:.2e})"
        );
        worst = worst.max(rel);
    }
    worst
}

/// A run of `args` on the CPU to step 2; resumed from there on the CPU and on wgpu to step 4
/// (wgpu writes a checkpoint at 4); that checkpoint resumed on wgpu and on the CPU to step 6.
fn hand_over(task: &str, args: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let mut first = vec![
        "pretrain",
        "--task",
        task,
        "--out",
        a.to_str().unwrap(),
        "--stop-after",
        "2",
        "--set",
        "checkpoint_every=2",
        "--set",
        "log_every=1",
        "--set",
        "steps=6",
        // One model on the CPU as on the GPU: dropout masks are drawn per replica (nn::dropout).
        "--set",
        "replicas=1",
    ];
    first.extend_from_slice(args);
    let stdout = ok(&first);
    assert!(stdout.contains("training on cpu"), "{stdout}");
    copy_dir(&a, &b);
    resume(&a, "cpu", 4);
    on_wgpu(&resume(&b, "wgpu", 4));
    let run_json = std::fs::read_to_string(b.join("run.json")).unwrap();
    assert!(!run_json.contains("\"device\": \"cpu"), "{run_json}");
    let to_gpu = agree(
        &format!("{task}, a CPU checkpoint"),
        &losses(&a, 2),
        &losses(&b, 2),
    );

    copy_dir(&b, &c);
    on_wgpu(&resume(&b, "wgpu", 6));
    resume(&c, "cpu", 6);
    let to_cpu = agree(
        &format!("{task}, a wgpu checkpoint"),
        &losses(&c, 4),
        &losses(&b, 4),
    );
    eprintln!(
        "{task}: largest relative loss difference cpu vs wgpu {to_gpu:.2e} (from a CPU \
         checkpoint), {to_cpu:.2e} (from a wgpu checkpoint)"
    );
}

const SMALL_IMAGES: &[&str] = &[
    "--data",
    "builtin:fashion-mnist-demo",
    "--set",
    "width=8",
    "--set",
    "batch_size=16",
    "--set",
    "warmup_steps=2",
    "--set",
    "eval_every=0",
];

#[test]
fn a_conv_task_trains_on_wgpu_as_on_the_cpu() {
    if adapter().is_some() {
        hand_over("rotation", SMALL_IMAGES);
    }
}

#[test]
fn a_joint_embedding_task_trains_on_wgpu_as_on_the_cpu() {
    if adapter().is_some() {
        hand_over("simclr", SMALL_IMAGES);
    }
}

#[test]
fn a_gan_trains_on_wgpu_as_on_the_cpu() {
    if adapter().is_some() {
        hand_over("superres", SMALL_IMAGES);
    }
}

#[test]
fn a_language_model_trains_on_wgpu_as_on_the_cpu() {
    if adapter().is_none() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let txt = austen_slice(dir.path(), 40_000);
    let data = format!("text:{}", txt.display());
    let mut args = vec!["--data", &data];
    args.extend_from_slice(TINY_LM);
    args.extend_from_slice(&[
        "--set",
        "warmup_steps=2",
        "--set",
        "eval_every=100",
        "--set",
        "eval_batches=1",
    ]);
    hand_over("causal-lm", &args);
}

#[test]
fn the_adapter_is_named() {
    let Some(line) = adapter() else {
        return;
    };
    // `wgpu: NAME, API, DRIVER`
    assert!(
        ["Vulkan", "Metal", "Dx12", "Gl"]
            .iter()
            .any(|api| line.contains(api)),
        "{line}"
    );
}

/// Without any driver (the Vulkan loader and EGL pointed at nothing), `--device wgpu` is one line
/// naming the device and what to install, and the run directory is not created.
#[test]
fn no_adapter_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let nothing = dir.path().join("none.json");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args([
            "pretrain", "--task", "rotation", "--device", "wgpu", "--out",
        ])
        .arg(&out)
        .args(["--data", "builtin:fashion-mnist-demo", "-q"])
        .env("VK_ICD_FILENAMES", &nothing)
        .env("VK_DRIVER_FILES", &nothing)
        .env("__EGL_VENDOR_LIBRARY_FILENAMES", &nothing)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        line.contains("--device wgpu: no GPU adapter could be opened")
            && line.contains("mesa-vulkan-drivers"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists());
}
