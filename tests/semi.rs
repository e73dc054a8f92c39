//! `--protocol semi`: the semi-supervised stage end to end through the binary, on idx files this
//! test writes from the built-in Fashion-MNIST slice: its unlabelled pool is the training split
//! only, it resumes bit for bit from a run and from scratch, and bad input gets one clear line.

mod common;

use std::path::Path;

use common::{ok, pretext};

/// Train/test idx files of `train` + `test` built-in images in `dir`; with `poison`, the test
/// images are noise and their labels rotated (what a leak of test images would feel).
fn write_data(dir: &Path, train: usize, test: usize, poison: bool) -> String {
    let ds = pretext::commands::demo::builtin_dataset().unwrap();
    let t = ds.test.as_ref().unwrap();
    let side = ds.train.height;
    let bytes = |set: &pretext::data::ImageSet, n: usize| set.images[..n * side * side].to_vec();
    let labels = |set: &pretext::data::ImageSet, n: usize| -> Vec<u8> {
        set.labels.as_ref().unwrap()[..n]
            .iter()
            .map(|&l| l as u8)
            .collect()
    };
    std::fs::create_dir_all(dir).unwrap();
    use pretext::data::idx::{write_idx_images, write_idx_labels};
    // The built-in slice is ordered by class: take every class's share by striding.
    let pick = |set: &pretext::data::ImageSet, n: usize| -> (Vec<u8>, Vec<u8>) {
        let stride = set.n / n;
        let idx: Vec<usize> = (0..n).map(|i| i * stride).collect();
        let (px, lb) = (bytes(set, set.n), labels(set, set.n));
        let mut p = Vec::new();
        let mut l = Vec::new();
        for i in idx {
            p.extend_from_slice(&px[i * side * side..(i + 1) * side * side]);
            l.push(lb[i]);
        }
        (p, l)
    };
    let (tp, tl) = pick(&ds.train, train);
    let (mut vp, mut vl) = pick(t, test);
    if poison {
        vp.iter_mut()
            .enumerate()
            .for_each(|(i, v)| *v = (i * 7919 % 251) as u8);
        vl.iter_mut().for_each(|l| *l = (*l + 3) % 10);
    }
    write_idx_images(dir.join("train-images-idx3-ubyte"), train, side, side, &tp).unwrap();
    write_idx_labels(dir.join("train-labels-idx1-ubyte"), &tl).unwrap();
    write_idx_images(dir.join("t10k-images-idx3-ubyte"), test, side, side, &vp).unwrap();
    write_idx_labels(dir.join("t10k-labels-idx1-ubyte"), &vl).unwrap();
    format!("idx:{}", dir.display())
}

/// A tiny semi stage: width-4 conv net, 6 fine-tuning steps, 8 student steps of 4 labelled +
/// 8 unlabelled images, a checkpoint every 4.
const TINY: &[&str] = &[
    "--set",
    "width=4",
    "--set",
    "finetune_steps=6",
    "--set",
    "finetune_batch_size=8",
    "--set",
    "probe_steps=5",
    "--set",
    "semi_steps=8",
    "--set",
    "semi_batch_size=4",
    "--set",
    "semi_ratio=2",
    "--set",
    "semi_checkpoint_every=4",
];

fn semi(data: &str, from: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "transfer",
        "--from",
        from,
        "--data",
        data,
        "--labels-per-class",
        "2",
        "--protocol",
        "semi",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
    ];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    ok(&args);
    let json = out.join("semi-2-seed0.json");
    serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap()
}

/// The stage's finished student (safetensors, head included) and the teacher's cached pool
/// logits.
fn learned(out: &Path) -> (Vec<u8>, Vec<u8>) {
    let stage = out.join("semi-2-seed0");
    (
        std::fs::read(stage.join("student.safetensors")).unwrap(),
        std::fs::read(stage.join("teacher-logits.safetensors")).unwrap(),
    )
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn pseudo_labels_never_come_from_test_images() {
    let d = tmp();
    let clean = write_data(&d.path().join("clean"), 120, 40, false);
    let poisoned = write_data(&d.path().join("poisoned"), 120, 40, true);
    let a = semi(&clean, "scratch", &d.path().join("a"), &[]);
    let b = semi(&poisoned, "scratch", &d.path().join("b"), &[]);
    assert_eq!(a["semi"]["pool"], 120, "the pool is the training split");
    // Everything learned is the same; only the evaluation differs.
    assert!(
        learned(&d.path().join("a")) == learned(&d.path().join("b")),
        "the test images reached the semi stage"
    );
    assert_ne!(
        a["accuracy"], b["accuracy"],
        "the poisoned test split was evaluated"
    );
}

/// An uninterrupted stage, and one killed while writing its second checkpoint then run again
/// (the same command continues from the first): the same student, bit for bit.
fn resumes_bitwise(data: &str, from: &str, dir: &Path) {
    let whole = dir.join("whole");
    semi(data, from, &whole, &[]);
    let cut = dir.join("cut");
    let mut args = vec![
        "transfer".to_string(),
        "--from".into(),
        from.into(),
        "--data".into(),
        data.into(),
        "--labels-per-class".into(),
        "2".into(),
        "--protocol".into(),
        "semi".into(),
        "--out".into(),
        cut.to_str().unwrap().into(),
        "--quiet".into(),
    ];
    args.extend(TINY.iter().map(|s| s.to_string()));
    let killed = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(&args)
        .env("PRETEXT_FAULT_KILL_IN_CHECKPOINT", "8")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "the fault hook kills the stage");
    let latest = std::fs::read_to_string(cut.join("semi-2-seed0/checkpoints/latest")).unwrap();
    assert_eq!(
        latest.trim(),
        "step-00000004",
        "the first checkpoint survived"
    );
    let again = semi(data, from, &cut, &[]);
    assert!(again["accuracy"].as_f64().unwrap() > 0.0);
    assert!(
        learned(&whole) == learned(&cut),
        "the resumed stage differs from the uninterrupted one"
    );
}

#[test]
fn semi_from_scratch_resumes_bitwise() {
    let d = tmp();
    let data = write_data(&d.path().join("data"), 120, 40, false);
    resumes_bitwise(&data, "scratch", d.path());
}

#[test]
fn semi_from_a_run_resumes_bitwise() {
    let d = tmp();
    let data = write_data(&d.path().join("data"), 120, 40, false);
    let run = d.path().join("run");
    ok(&[
        "pretrain",
        "--task",
        "rotation",
        "--data",
        &data,
        "--out",
        run.to_str().unwrap(),
        "--set",
        "width=4",
        "--set",
        "steps=4",
        "--set",
        "batch_size=8",
        "--set",
        "eval_every=0",
        "--quiet",
    ]);
    resumes_bitwise(&data, run.to_str().unwrap(), d.path());
}

/// One line on stderr naming what is wrong, and a failure status.
fn refused(args: &[&str]) -> String {
    let out = pretext(args);
    assert!(!out.status.success(), "{args:?} succeeded");
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn bad_input_gets_one_clear_line() {
    let d = tmp();
    let data = write_data(&d.path().join("data"), 40, 20, false);
    let out = d.path().join("o");
    let base = |extra: &[&'static str]| -> Vec<String> {
        let mut a: Vec<String> = [
            "transfer",
            "--from",
            "scratch",
            "--data",
            &data,
            "--protocol",
            "semi",
            "--out",
            out.to_str().unwrap(),
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(TINY.iter().map(|s| s.to_string()));
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let run = |a: Vec<String>| {
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        refused(&refs)
    };
    // No unlabelled pool to speak of: 40 images, a step wants 8 × 7.
    let e = run(base(&[
        "--labels-per-class",
        "2",
        "--set",
        "semi_batch_size=8",
        "--set",
        "semi_ratio=7",
    ]));
    assert!(e.contains("unlabelled pool") && e.contains("56"), "{e}");
    // Zero labels.
    let e = run(base(&["--labels-per-class", "0"]));
    assert!(e.contains("--labels-per-class 0"), "{e}");
    // Random weights are the frozen floor: semi trains the encoder.
    let e = refused(&[
        "transfer",
        "--from",
        "random",
        "--data",
        &data,
        "--protocol",
        "semi",
        "--labels-per-class",
        "2",
    ]);
    assert!(e.contains("--from scratch"), "{e}");
    // A bad setting names its key.
    let e = run(base(&[
        "--labels-per-class",
        "2",
        "--set",
        "semi_threshold=1.5",
    ]));
    assert!(e.contains("semi_threshold"), "{e}");
    let e = run(base(&["--labels-per-class", "2", "--set", "semi_cutout=2"]));
    assert!(e.contains("semi_cutout"), "{e}");
}

#[test]
fn a_text_run_on_images_is_refused_in_one_line() {
    let d = tmp();
    let data = write_data(&d.path().join("data"), 40, 20, false);
    let text = common::austen_slice(d.path(), 20_000);
    let run = d.path().join("lm");
    ok(&[
        "pretrain",
        "--task",
        "causal-lm",
        "--data",
        &format!("text:{}", text.display()),
        "--tokenizer",
        "bytes",
        "--out",
        run.to_str().unwrap(),
        "--set",
        "model=tiny",
        "--set",
        "d_model=16",
        "--set",
        "layers=1",
        "--set",
        "heads=2",
        "--set",
        "d_ff=32",
        "--set",
        "seq_len=16",
        "--set",
        "steps=2",
        "--set",
        "batch_size=2",
        "--quiet",
    ]);
    let e = refused(&[
        "transfer",
        "--from",
        run.to_str().unwrap(),
        "--data",
        &data,
        "--protocol",
        "semi",
        "--labels-per-class",
        "2",
    ]);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(e.contains("idx:"), "{e}");
}
