//! Masked image modelling on real Fashion-MNIST images (the built-in slice): MAE on the `vit`
//! backbone resumes bit for bit and draws its picture, and a ViT encoder goes through every
//! transfer protocol (linear probe, k-NN, fine-tuning, the per-layer probe); another image task
//! (rotation) trains a ViT too.

mod common;

use common::{build, config, ok, pretext, serial, small_dataset, small_run};
use pretext::data::augment::Img;
use pretext::data::rngs::BatchRngs;
use pretext::nn::input::InputSpec;

fn run(dir: &std::path::Path, stop_after: Option<u64>, resume: bool) -> f32 {
    let sets = [
        "task=\"mae\"",
        "backbone=\"vit\"",
        "width=32",
        "steps=8",
        "seed=5",
        "eval_every=0",
    ];
    small_run(dir, &sets, stop_after, resume).final_loss
}

#[test]
fn mae_resumes_bitwise_and_draws_its_reconstructions() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    let straight = run(&a, None, false);
    run(&b, Some(4), false);
    let resumed = run(&b, None, true);
    assert!(straight.is_finite());
    assert_eq!(straight.to_bits(), resumed.to_bits());
    let wa = std::fs::read(a.join("encoder.safetensors")).unwrap();
    let wb = std::fs::read(b.join("encoder.safetensors")).unwrap();
    assert!(wa == wb, "final encoder weights differ after resume");
    // masked input | reconstruction | original, 8 rows of 28-px images at zoom 3.
    let png = image::open(a.join("samples-mae.png")).unwrap();
    assert_eq!(png.width(), 3 * (28 * 3 + 2) + 2);
    // The held-out masked-patch loss is in the summary.
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(a.join("summary.json")).unwrap()).unwrap();
    // "eval": [[name, value], …]
    let eval = summary["eval"]
        .as_array()
        .and_then(|e| e.iter().find(|p| p[0] == "masked_loss"))
        .and_then(|p| p[1].as_f64())
        .unwrap_or(f64::NAN);
    assert!(eval.is_finite() && eval > 0.0, "{summary}");
}

/// The accuracy `pretext transfer` prints.
fn accuracy(stdout: &str) -> f64 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("accuracy: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    line["accuracy: ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_vit_encoder_transfers_by_every_protocol() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mae");
    let d = dir.to_str().unwrap();
    ok(&[
        "pretrain",
        "--task",
        "mae",
        "--set",
        "backbone=vit",
        "--data",
        "builtin:fashion-mnist-demo",
        "--out",
        d,
        "--set",
        "steps=6",
        "--set",
        "width=32",
        "--set",
        "batch_size=32",
        "-q",
    ]);
    let transfer = |protocol: &str, extra: &[&str]| {
        let mut args = vec![
            "transfer",
            "--from",
            d,
            "--protocol",
            protocol,
            "--labels-per-class",
            "20",
            "--set",
            "test_limit=500",
            "--set",
            "probe_steps=100",
            "--set",
            "finetune_steps=40",
        ];
        args.extend_from_slice(extra);
        accuracy(&ok(&args))
    };
    // Chance is 0.1. Six steps train next to nothing and a ViT at initialisation pools little
    // more than its average patch (0.26–0.35 measured), so this checks the wiring: every
    // protocol runs on a ViT and learns something from its features.
    for (protocol, extra) in [
        ("linear", &[][..]),
        ("knn", &["--set", "knn_k=10"][..]),
        ("linear", &["--set", "stage=2"][..]),
        ("finetune", &[][..]),
    ] {
        let acc = transfer(protocol, extra);
        println!("{protocol} {extra:?}: {acc:.3}");
        assert!(acc > 0.2, "{protocol} {extra:?}: accuracy {acc}");
    }
    // A stage past the last block is a clear error.
    let out = pretext(&[
        "transfer",
        "--from",
        d,
        "--protocol",
        "linear",
        "--labels-per-class",
        "5",
        "--set",
        "stage=7",
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stage"), "{err}");
}

#[test]
fn rotation_trains_a_vit_and_mae_refuses_a_convnet() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("rot");
    ok(&[
        "pretrain",
        "--task",
        "rotation",
        "--set",
        "backbone=vit",
        "--data",
        "builtin:fashion-mnist-demo",
        "--out",
        dir.to_str().unwrap(),
        "--set",
        "steps=3",
        "--set",
        "width=32",
        "--set",
        "batch_size=16",
        "--set",
        "patch_size=7",
        "-q",
    ]);
    let info = std::fs::read_to_string(dir.join("run.json")).unwrap();
    assert!(
        info.contains("\"vit\"") && info.contains("\"patch\": 7"),
        "{info}"
    );
    let out = pretext(&[
        "pretrain",
        "--task",
        "mae",
        "--data",
        "builtin:fashion-mnist-demo",
        "--out",
        tmp.path().join("conv").to_str().unwrap(),
        "-q",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("vision transformer"), "{err}");
}

#[test]
fn every_grey_image_task_steps_on_a_vit() {
    let _serial = serial();
    let ds = small_dataset(8);
    let input = InputSpec::from_images(&ds.train).unwrap();
    let imgs: Vec<Img> = (0..8)
        .map(|i| Img::from_u8(1, 28, 28, &ds.train.image(i).unwrap()))
        .collect();
    let labels = vec![0u32; 8];
    for task in [
        "rotation", "context", "jigsaw", "superres", "inpaint", "simclr", "byol", "mae",
    ] {
        let cfg = config(&[
            &format!("task=\"{task}\""),
            "backbone=\"vit\"",
            "width=32",
            "batch_size=8",
        ]);
        let mut t = build(task, &cfg, &input);
        let batch = t.make_batch()(&imgs, &labels, &BatchRngs::new(0, 0));
        for step in 0..2 {
            let s = t.step(batch.clone(), step, 1e-3);
            assert!(!s.skipped && s.loss.is_finite(), "{task}: loss {}", s.loss);
        }
        assert_eq!(t.encoder().stages(), 6, "{task}");
    }
}
