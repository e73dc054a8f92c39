//! `pretext compare` end to end on the built-in data with tiny budgets: everything lands on disk,
//! the report is built, and running the same command again skips everything.

mod common;

use common::{ok, pretext};

use std::path::Path;
use std::time::SystemTime;

fn fails(args: &[&str], needle: &str) {
    let out = pretext(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "pretext {args:?}: {stderr}");
    assert!(stderr.contains(needle), "expected '{needle}' in:\n{stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "one-line error expected:\n{stderr}"
    );
}

/// Every result JSON under `dir` with its modification time.
/// The result files under `dir` with their modification times; a transfer stage's own
/// directory (fine-tuning's or the semi stage's, beside its result) is not a result.
fn results(dir: &Path) -> Vec<(String, SystemTime)> {
    let mut v = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let stage = p.join("finetune.json").exists() || p.join("semi.json").exists();
            if p.is_dir() && !stage {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "json") {
                let t = std::fs::metadata(&p).unwrap().modified().unwrap();
                v.push((p.display().to_string(), t));
            }
        }
    }
    v.sort();
    v
}

fn log_lines(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn compare_runs_everything_once_then_skips_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let out_s = out.to_str().unwrap();
    let args = [
        "compare",
        "--data",
        "builtin:fashion-mnist-demo",
        "--tasks",
        "rotation,context",
        "--labels-per-class",
        "1,5",
        "--protocols",
        "linear,knn",
        "--budget",
        "4",
        "--set",
        "width=8",
        "--set",
        "batch_size=16",
        "--transfer-set",
        "test_limit=300",
        "--transfer-set",
        "probe_steps=50",
        "--transfer-set",
        "finetune_steps=10",
        "--out",
        out_s,
    ];
    let stdout = ok(&args);
    // rotation, context, random × linear, knn × (3 + 3 draws) = 36; scratch finetune 6;
    // per-stage probes (stages 1-4, each its own cell) × 3 encoders = 12.
    let total = 36 + 6 + 12;
    assert!(
        stdout.contains(&format!("{total} of {total} cells computed")),
        "{stdout}"
    );
    assert!(
        stdout.contains("| rotation | linear |") && stdout.contains("| from scratch | finetune |"),
        "{stdout}"
    );
    for f in [
        "compare.json",
        "log.jsonl",
        "report.html",
        "report.md",
        "plots/label-efficiency.png",
        "plots/per-layer.png",
        "plots/pretrain-loss.png",
        "pretrain/rotation/encoder.safetensors",
        "pretrain/context/context-samples.png",
        "cells/rotation/linear-1-seed2.json",
        "cells/random/knn-5-seed0.json",
        "cells/scratch/finetune-5-seed1.json",
        // Fine-tuning's stage directory keeps its loss curve, not its checkpoints.
        "cells/scratch/finetune-5-seed1/metrics.jsonl",
        "cells/context/stage2/linear-5-seed0.json",
    ] {
        assert!(out.join(f).exists(), "missing {f}");
    }
    assert!(!out
        .join("cells/scratch/finetune-5-seed1/checkpoints")
        .exists());
    let cells = results(&out.join("cells"));
    assert_eq!(cells.len(), total);
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(html.contains("<table id=\"results\">"));
    // Three plots and the context sample picture, embedded.
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 4);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("![Label efficiency](plots/label-efficiency.png)"));

    // The same command again: nothing is pretrained or evaluated, nothing rewritten.
    let stdout = ok(&args);
    assert!(
        stdout.contains(&format!("0 of {total} cells computed")),
        "{stdout}"
    );
    assert_eq!(results(&out.join("cells")), cells);
    let log = log_lines(&out);
    assert_eq!(log.len(), 2);
    assert_eq!(log[1]["cells_run"], 0);
    assert_eq!(log[1]["pretrained"], serde_json::json!([]));

    // An interrupted pretraining (no final encoder, no summary) resumes from its checkpoint.
    std::fs::remove_file(out.join("pretrain/rotation/encoder.safetensors")).unwrap();
    std::fs::remove_file(out.join("pretrain/rotation/summary.json")).unwrap();
    let stdout = ok(&args);
    assert!(stdout.contains("resuming"), "{stdout}");
    assert!(out.join("pretrain/rotation/encoder.safetensors").exists());
    assert_eq!(
        log_lines(&out)[2]["pretrained"],
        serde_json::json!(["rotation"])
    );

    // The report can be rebuilt on its own.
    std::fs::remove_file(out.join("report.html")).unwrap();
    let stdout = ok(&["report", out_s]);
    assert!(stdout.contains("report.html"), "{stdout}");
    assert!(out.join("report.html").exists());

    // Other settings on the same OUT are refused with what to do.
    let mut other = args.to_vec();
    let i = other.iter().position(|a| *a == "4").unwrap();
    other[i] = "8";
    fails(
        &other,
        "holds a compare with other settings: --budget 8 (was 4)",
    );
}

#[test]
fn bad_compare_command_lines_give_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x");
    let out_s = out.to_str().unwrap();
    let base = [
        "compare",
        "--data",
        "builtin:fashion-mnist-demo",
        "--out",
        out_s,
    ];
    let with = |extra: &[&'static str]| -> Vec<&str> { [&base[..], extra].concat() };
    fails(
        &with(&["--tasks", "rotation,nosuch"]),
        "unknown task 'nosuch'",
    );
    fails(
        &with(&["--labels-per-class", "1,0"]),
        "expected a positive whole number",
    );
    fails(
        &with(&["--protocols", "linear,svm"]),
        "unknown protocol 'svm'",
    );
    fails(&with(&["--set", "steps=10"]), "use --budget");
    fails(&with(&["--stages", "9"]), "--stages");
    fails(&["report", out_s], "no readable compare.json");
    assert!(!out.exists(), "a refused command wrote {}", out.display());
}

#[test]
fn compare_runs_the_semi_stage_for_pretrained_and_scratch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cmp");
    let stdout = ok(&[
        "compare",
        "--data",
        "builtin:fashion-mnist-demo",
        "--tasks",
        "rotation",
        "--labels-per-class",
        "5",
        "--seeds",
        "1",
        "--protocols",
        "linear,semi",
        "--stages",
        "none",
        "--budget",
        "4",
        "--set",
        "width=4",
        "--set",
        "batch_size=16",
        "--transfer-set",
        "test_limit=200",
        "--transfer-set",
        "probe_steps=20",
        "--transfer-set",
        "finetune_steps=4",
        "--transfer-set",
        "semi_steps=4",
        "--transfer-set",
        "semi_batch_size=4",
        "--transfer-set",
        "semi_ratio=2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let mut cells: Vec<String> = Vec::new();
    for enc in std::fs::read_dir(out.join("cells")).unwrap() {
        let enc = enc.unwrap();
        for f in std::fs::read_dir(enc.path()).unwrap() {
            let f = f.unwrap().file_name().into_string().unwrap();
            cells.push(format!("{}/{f}", enc.file_name().into_string().unwrap()));
        }
    }
    cells.sort();
    // rotation × linear, semi; random × linear; scratch × finetune (always), semi.
    assert!(
        stdout.contains("5 of 5 cells computed"),
        "{stdout} {cells:?}"
    );
    for f in [
        "cells/rotation/semi-5-seed0.json",
        "cells/scratch/semi-5-seed0.json",
        "cells/scratch/finetune-5-seed0.json",
        "cells/random/linear-5-seed0.json",
    ] {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(f)).unwrap()).unwrap();
        let acc = r["accuracy"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&acc), "{f}: {r}");
    }
    assert!(!out.join("cells/random/semi-5-seed0.json").exists());
    let semi: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("cells/rotation/semi-5-seed0.json")).unwrap(),
    )
    .unwrap();
    assert!(
        semi["semi"]["teacher_accuracy"].as_f64().is_some(),
        "{semi}"
    );
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(md.contains("| rotation | semi |"), "{md}");
    assert!(md.contains("| from scratch | semi |"), "{md}");
}
