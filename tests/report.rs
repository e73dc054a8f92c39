//! `pretext report` on an on-disk compare layout written here, file by file, in the exact format
//! `pretext compare` writes; then the page in a real browser (headless Chromium).

mod common;

use common::{chromium, render_in_chromium};
use std::path::{Path, PathBuf};
use std::process::Command;

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn result_json(
    from: &str,
    protocol: &str,
    labels: &str,
    seed: u64,
    stage: u64,
    acc: f64,
) -> String {
    let n_train = if labels == "all" {
        6000
    } else {
        labels.parse::<usize>().unwrap() * 10
    };
    format!(
        r#"{{
  "from": "{from}",
  "protocol": "{protocol}",
  "labels_per_class": "{labels}",
  "n_train": {n_train},
  "n_test": 2000,
  "stage": {stage},
  "accuracy": {acc},
  "seed": {seed},
  "wall_s": 1.5,
  "evaluated_on": "test split"
}}"#
    )
}

/// A small compare: rotation and jigsaw (jigsaw's pretraining picture included), colorize
/// skipped, labels 1 and 100 with two protocols; one cell missing.
fn synthetic_compare(out: &Path) {
    write(
        &out.join("compare.json"),
        r#"{
  "data": "idx:../shared/data/fashion-mnist",
  "tasks": ["rotation", "jigsaw"],
  "labels_per_class": ["1", "100"],
  "protocols": ["linear", "knn"],
  "budget": 50,
  "seeds": 3,
  "stages": [1, 2, 3, 4],
  "encoder_stages": 4,
  "classes": 10,
  "pretrain_sets": ["width=16"],
  "transfer_sets": ["test_limit=2000"]
}"#,
    );
    write(
        &out.join("skipped.json"),
        r#"[["colorize", "config: colorize: needs colour images; idx:../shared/data/fashion-mnist is grayscale"]]"#,
    );
    write(
        &out.join("log.jsonl"),
        concat!(
            r#"{"command":"pretext compare --data idx:../shared/data/fashion-mnist --tasks rotation,jigsaw,colorize --labels-per-class 1,100 --budget 50 --out runs/cmp","pretext_version":"0.1.0","burn_version":"0.22.1","device":"cpu","cpu":"Intel Xeon, 2 cores","started":"2026-11-28 09:00:00 UTC","wall_s":321.5,"pretrained":["rotation","jigsaw"],"cells_run":40,"cells_total":41,"interrupted":false}"#,
            "\n"
        ),
    );
    let runs = [("rotation", 1.386, 0.9), ("jigsaw", 4.605, 3.1)];
    for (task, start, end) in runs {
        let dir = out.join("pretrain").join(task);
        let mut metrics = String::new();
        for i in 1..=5 {
            let loss = start + (end - start) * i as f64 / 5.0;
            metrics.push_str(&format!(
                "{{\"step\":{},\"loss\":{loss},\"lr\":0.002,\"items_per_s\":150.0,\"elapsed_s\":{}}}\n",
                i * 10,
                i * 3
            ));
        }
        write(&dir.join("metrics.jsonl"), &metrics);
        write(
            &dir.join("summary.json"),
            &format!(
                r#"{{"task":"{task}","steps_done":50,"steps":50,"final_loss":{end},"final_metrics":[["acc",0.6]],"wall_s":60.0,"items_per_s":150.0,"run_dir":"runs/cmp/pretrain/{task}","completed":true}}"#
            ),
        );
        write(&dir.join("encoder.safetensors"), "not read by the report");
    }
    // jigsaw's picture of its inputs: a checkerboard.
    let img = image::RgbImage::from_fn(90, 60, |x, y| {
        if (x / 10 + y / 10) % 2 == 0 {
            image::Rgb([30, 30, 30])
        } else {
            image::Rgb([220, 200, 40])
        }
    });
    img.save(out.join("pretrain/jigsaw/jigsaw-samples.png"))
        .unwrap();

    let base = |enc: &str, task_like: bool| -> f64 {
        match enc {
            "rotation" => 0.05,
            "jigsaw" if task_like => 0.02,
            "random" => 0.0,
            _ => -0.1,
        }
    };
    for enc in ["rotation", "jigsaw", "random"] {
        let from = if enc == "random" {
            "random".to_string()
        } else {
            format!("runs/cmp/pretrain/{enc}")
        };
        for (p, offset) in [("linear", 0.0), ("knn", -0.03)] {
            for (labels, seeds, level) in [("1", 3, 0.45), ("100", 1, 0.75)] {
                for seed in 0..seeds {
                    if enc == "jigsaw" && p == "knn" && labels == "100" {
                        continue; // a cell not finished yet
                    }
                    let acc = level + offset + base(enc, true) + 0.01 * seed as f64;
                    write(
                        &out.join(format!("cells/{enc}/{p}-{labels}-seed{seed}.json")),
                        &result_json(&from, p, labels, seed, 4, acc),
                    );
                }
            }
        }
        for stage in 1..=4 {
            // Stage 4 is its own cell, here at the main cell's value.
            let acc = if stage == 4 {
                0.75
            } else {
                0.5 + 0.06 * stage as f64
            } + base(enc, true);
            write(
                &out.join(format!("cells/{enc}/stage{stage}/linear-100-seed0.json")),
                &result_json(&from, "linear", "100", 0, stage, acc),
            );
        }
    }
    for (labels, seeds, level) in [("1", 3, 0.3), ("100", 1, 0.78)] {
        for seed in 0..seeds {
            write(
                &out.join(format!("cells/scratch/finetune-{labels}-seed{seed}.json")),
                &result_json(
                    "scratch",
                    "finetune",
                    labels,
                    seed,
                    4,
                    level + 0.01 * seed as f64,
                ),
            );
        }
    }
}

fn build_report(dir: &Path) -> PathBuf {
    let out = dir.join("cmp");
    synthetic_compare(&out);
    let o = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["report", out.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    out
}

#[test]
fn report_is_built_from_what_is_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let out = build_report(dir.path());
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    // Three plots and jigsaw's picture, embedded; no links to files (opens offline, anywhere).
    assert_eq!(html.matches("src=\"data:image/png;base64,").count(), 4);
    assert!(!html.contains("src=\"plots/") && !html.contains("http"));
    for f in ["label-efficiency.png", "per-layer.png", "pretrain-loss.png"] {
        let img = image::open(out.join("plots").join(f)).unwrap().to_rgb8();
        assert!(img.width() > 300 && img.height() > 200, "{f}");
    }
    // rotation linear at 1 label: seeds 0.50, 0.51, 0.52 -> mean 0.51, population std 0.0082;
    // it is the best of its column (scratch 0.31, random 0.46, jigsaw 0.48).
    assert!(
        md.contains("| rotation | linear | **0.5100 ± 0.0082** | **0.8000** |"),
        "{md}"
    );
    assert!(
        md.contains("| jigsaw | knn | 0.4500 ± 0.0082 | — |"),
        "{md}"
    );
    assert!(md.contains("| from scratch | finetune | 0.3100 ± 0.0082 | 0.7800 |"));
    assert!(html.contains("<td class=\"best\"><b>0.5100 ± 0.0082</b></td>"));
    // Per-layer table: rotation is the best at every stage.
    assert!(
        md.contains("| rotation | **0.6100** | **0.6700** | **0.7300** | **0.8000** |"),
        "{md}"
    );
    assert!(
        md.contains("| random | 0.5600 | 0.6200 | 0.6800 | 0.7500 |"),
        "{md}"
    );
    // Skipped task with its reason, the command, versions, wall time.
    assert!(md.contains("- colorize: config: colorize: needs colour images"));
    assert!(html.contains("pretext compare --data idx:../shared/data/fashion-mnist"));
    assert!(md.contains("pretext 0.1.0, burn 0.22.1"));
    assert!(md.contains("322 s in all"), "{md}");
    assert!(md.contains("![jigsaw samples](pretrain/jigsaw/jigsaw-samples.png)"));
    assert!(md.contains("- rotation: no sample picture"));
    assert!(md.contains("cells: 39 of 40 on disk"), "{md}");
}

#[test]
fn report_renders_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = build_report(dir.path());
    let shot = dir.path().join("shot.png");
    render_in_chromium(&chromium, &out.join("report.html"), &shot);
    // Keep a copy to look at (target/report-screenshot.png).
    let keep = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/report-screenshot.png");
    let _ = std::fs::copy(&shot, keep);
}
