//! `pretext compare` on labelled text (a slice of the SpamAssassin e-mails in ../shared/data),
//! end to end through the binary: both language-model tasks, every protocol, the random and
//! scratch baselines, the per-layer probe, the report (rendered in headless Chromium); and the
//! text transfer's feature cache: reused, invalidated when the encoder or the data change, and
//! giving the same numbers as no cache.

mod common;

use std::io::Write;
use std::path::Path;

use common::{chromium, mail_slice, ok, pretext, render_in_chromium};

const TINY: &[&str] = &[
    "--set",
    "vocab=300",
    "--set",
    "d_model=32",
    "--set",
    "layers=2",
    "--set",
    "heads=2",
    "--set",
    "max_len=48",
    "--set",
    "batch_size=8",
    "--set",
    "warmup_steps=2",
    "--set",
    "eval_every=5",
    "--set",
    "eval_batches=2",
];

#[test]
fn text_compare_runs_every_protocol_and_baseline_and_renders() {
    let dir = tempfile::tempdir().unwrap();
    let data = format!("jsonl:{}", mail_slice(dir.path(), 60, 1500).display());
    let out = dir.path().join("cmp");
    let mut args = vec![
        "compare",
        "--data",
        &data,
        "--labels-per-class",
        "4,16",
        "--seeds",
        "2",
        "--budget",
        "6",
        "--transfer-set",
        "finetune_steps=4",
        "--transfer-set",
        "probe_steps=30",
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(TINY);
    let stdout = ok(&args);
    assert!(stdout.contains("macro-F1"), "{stdout}");
    // Tasks masked-lm, causal-lm by default; every cell on disk.
    for task in ["masked-lm", "causal-lm"] {
        assert!(out
            .join("pretrain")
            .join(task)
            .join("encoder.safetensors")
            .exists());
        for p in ["linear", "knn", "finetune"] {
            for labels in ["4", "16"] {
                for seed in 0..2 {
                    let f = out.join(format!("cells/{task}/{p}-{labels}-seed{seed}.json"));
                    let r: serde_json::Value =
                        serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
                    let f1 = r["macro_f1"].as_f64().unwrap();
                    assert!((0.0..=1.0).contains(&f1), "{f:?}: {r}");
                }
            }
        }
        // Per-layer probe: block 1 of 2 (block 2 is the main cell, the final states).
        assert!(out
            .join(format!("cells/{task}/stage1/linear-16-seed0.json"))
            .exists());
        assert!(!out.join(format!("cells/{task}/stage2")).exists());
    }
    for seed in 0..2 {
        assert!(out
            .join(format!("cells/scratch/finetune-16-seed{seed}.json"))
            .exists());
        assert!(out
            .join(format!("cells/random/knn-4-seed{seed}.json"))
            .exists());
    }
    assert!(!out.join("cells/random/finetune-4-seed0.json").exists());
    // The baselines are the first task's network: same size of result, same held-out set.
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("cells/random/linear-16-seed0.json")).unwrap(),
    )
    .unwrap();
    let p: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("cells/masked-lm/linear-16-seed0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(r["n_test"], p["n_test"]);
    // One feature file per (encoder, stage) the frozen protocols used: 2 tasks × 2 stages, and
    // random weights: one per seed at the last stage, the probe of block 1 with seed 0.
    let features = std::fs::read_dir(out.join("features")).unwrap().count();
    assert_eq!(features, 2 * 2 + 3, "feature cache files");

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("Test macro-F1"), "{md}");
    assert!(md.contains("documents ("), "{md}");
    for plot in ["label-efficiency.png", "per-layer.png", "pretrain-loss.png"] {
        assert!(out.join("plots").join(plot).exists(), "{plot}");
    }
    // Run again: nothing left to do.
    let again = ok(&args);
    assert!(again.contains("0 of "), "{again}");
    if let Some(chromium) = chromium() {
        render_in_chromium(
            &chromium,
            &out.join("report.html"),
            &dir.path().join("shot.png"),
        );
    }
}

fn transfer(run: &Path, data: &str, seed: u64, out: &Path, extra: &[&str]) -> (f64, f64, String) {
    let seed = format!("seed={seed}");
    let mut a = vec![
        "transfer",
        "--from",
        run.to_str().unwrap(),
        "--data",
        data,
        "--labels-per-class",
        "8",
        "--protocol",
        "linear",
        "--set",
        &seed,
        "--set",
        "probe_steps=50",
        "--out",
        out.to_str().unwrap(),
    ];
    a.extend_from_slice(extra);
    let o = pretext(&a);
    assert!(o.status.success(), "{o:?}");
    let seed_n = seed.trim_start_matches("seed=");
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join(format!("linear-8-mean-seed{seed_n}.json"))).unwrap(),
    )
    .unwrap();
    (
        r["accuracy"].as_f64().unwrap(),
        r["macro_f1"].as_f64().unwrap(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A tiny masked LM pretrained for `steps` steps on `data`, in `run`.
fn pretrain_tiny(run: &Path, data: &str, steps: &str) -> std::path::PathBuf {
    let steps = format!("steps={steps}");
    let mut a = vec![
        "pretrain",
        "--task",
        "masked-lm",
        "--data",
        data,
        "--set",
        &steps,
        "-q",
        "--out",
        run.to_str().unwrap(),
    ];
    a.extend_from_slice(TINY);
    ok(&a);
    run.to_path_buf()
}

#[test]
fn text_features_are_cached_invalidated_and_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mail = mail_slice(dir.path(), 40, 1500);
    let data = format!("jsonl:{}", mail.display());
    let pretrain = |name: &str, steps: &str| pretrain_tiny(&dir.path().join(name), &data, steps);
    let run = pretrain("a", "4");
    let features = run.join("features");
    let files = || std::fs::read_dir(&features).map_or(0, |d| d.count());
    let out = dir.path().join("t");
    // First transfer encodes; the second (another label draw) finds every vector cached.
    let (acc0, f10, err) = transfer(&run, &data, 0, &out, &[]);
    assert!(err.contains("encoded"), "{err}");
    // Raw e-mails are read as their subject and body by default (`text_part = auto`).
    assert!(err.contains("documents read as e-mails"), "{err}");
    assert_eq!(files(), 1);
    let (acc1, f11, err) = transfer(&run, &data, 1, &out, &[]);
    assert!(!err.contains("encoded"), "cached: {err}");
    assert_eq!(files(), 1);
    // Without the cache: the very same numbers.
    let nc = dir.path().join("nc");
    let off = ["--set", "feature_cache=false"];
    let (a, f, _) = transfer(&run, &data, 0, &nc, &off);
    assert_eq!((a, f), (acc0, f10));
    let (a, f, _) = transfer(&run, &data, 1, &nc, &off);
    assert_eq!((a, f), (acc1, f11));
    assert_eq!(files(), 1);
    // Another encoder (a run trained longer, same architecture): a new file, not the old vectors.
    let b = pretrain("b", "8");
    std::fs::copy(
        b.join("encoder.safetensors"),
        run.join("encoder.safetensors"),
    )
    .unwrap();
    let (_, _, err) = transfer(&run, &data, 0, &out, &[]);
    assert!(err.contains("encoded"), "{err}");
    assert_eq!(files(), 2);
    // Changed data: one more e-mail.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&mail)
        .unwrap();
    writeln!(
        f,
        "{}",
        serde_json::json!({"text": "Subject: hello\n\nlunch at noon?", "label": "ham"})
    )
    .unwrap();
    drop(f);
    let (_, _, err) = transfer(&run, &data, 0, &out, &[]);
    assert!(err.contains("encoded"), "{err}");
    assert_eq!(files(), 3);
    // Reading the e-mails whole, headers and all, is another input: another file.
    let (_, f1_all, err) = transfer(&run, &data, 0, &out, &["--set", "text_part=all"]);
    assert!(err.contains("encoded"), "{err}");
    assert!(!err.contains("read as e-mails"), "{err}");
    assert!((0.0..=1.0).contains(&f1_all));
    assert_eq!(files(), 4);
    let bad = pretext(&[
        "transfer",
        "--from",
        run.to_str().unwrap(),
        "--data",
        &data,
        "--set",
        "text_part=headers",
    ]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("text_part"));
    // A damaged cache file is reported and recomputed, not trusted.
    for e in std::fs::read_dir(&features).unwrap() {
        std::fs::write(e.unwrap().path(), b"not safetensors").unwrap();
    }
    let (_, _, err) = transfer(&run, &data, 0, &out, &[]);
    assert!(err.contains("ignoring the feature cache"), "{err}");
}

/// LP-FT: fine-tuning a pretrained run starts from the linear probe's head
/// (`finetune_head = auto`), so a fine-tune that barely moves (one step at a vanishing rate)
/// predicts as the linear probe does.
#[test]
fn text_finetune_starts_from_the_linear_probe() {
    let dir = tempfile::tempdir().unwrap();
    let mail = mail_slice(dir.path(), 40, 1500);
    let data = format!("jsonl:{}", mail.display());
    let run = pretrain_tiny(&dir.path().join("run"), &data, "4");
    let scores = |protocol: &str, extra: &[&str]| {
        let out = dir.path().join(format!("{protocol}{}", extra.len()));
        let mut a = vec![
            "transfer",
            "--from",
            run.to_str().unwrap(),
            "--data",
            &data,
            "--labels-per-class",
            "8",
            "--protocol",
            protocol,
            "--set",
            "probe_steps=50",
            "--set",
            "finetune_steps=1",
            "--set",
            "finetune_lr=1e-12",
            "--set",
            "feature_cache=false",
            "-q",
            "--out",
            out.to_str().unwrap(),
        ];
        a.extend_from_slice(extra);
        ok(&a);
        let r: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.join(format!("{protocol}-8-mean-seed0.json"))).unwrap(),
        )
        .unwrap();
        (r["accuracy"].as_f64().unwrap(), r["f1_per_class"].clone())
    };
    let linear = scores("linear", &[]);
    // (With `finetune_head=random` the same fine-tune scores 0.45 here against the probe's 0.64.)
    assert_eq!(scores("finetune", &[]), linear);
    assert_eq!(
        scores("finetune", &["--set", "finetune_head=probe"]),
        linear
    );
}
