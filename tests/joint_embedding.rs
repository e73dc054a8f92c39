//! SimCLR and BYOL on real Fashion-MNIST images (the built-in slice): each loss falls when one
//! batch is seen again and again, a stopped and resumed run equals an uninterrupted one bit for
//! bit (BYOL's moving-average target included), and the run's k-NN monitor equals
//! `pretext transfer --protocol knn` on the same subset.

mod common;

use common::{build, config, ok, serial, small_dataset, small_run};
use pretext::data::augment::Img;
use pretext::data::rngs::BatchRngs;
use pretext::nn::input::InputSpec;

/// (first loss, last loss) over `steps` steps on one fixed batch of 16 images.
fn overfit(task: &str, sets: &[&str], steps: u64) -> (f32, f32) {
    let _serial = serial();
    let ds = small_dataset(16);
    let cfg = config(sets);
    let input = InputSpec::from_images(&ds.train).unwrap();
    let mut t = build(task, &cfg, &input);
    let imgs: Vec<Img> = (0..16)
        .map(|i| Img::from_u8(1, 28, 28, &ds.train.image(i).unwrap()))
        .collect();
    let batch = t.make_batch()(&imgs, &[], &BatchRngs::new(0, 0));
    let first = t.step(batch.clone(), 0, 3e-3).loss;
    let mut last = first;
    for step in 1..=steps {
        let s = t.step(batch.clone(), step, 3e-3);
        assert!(!s.skipped && s.loss.is_finite(), "{task}: loss {}", s.loss);
        last = s.loss;
    }
    println!("{task}: loss {first:.4} → {last:.4} after {steps} steps on one batch");
    (first, last)
}

#[test]
fn simclr_loss_falls_on_one_batch() {
    let (first, last) = overfit("simclr", &["task=\"simclr\""], 30);
    // 32 views: chance is ln(31) = 3.43 at τ = 0.2 with random embeddings near each other.
    assert!(first > 2.0, "{first}");
    assert!(last < 0.6 * first, "{first} → {last}");
}

#[test]
fn byol_loss_falls_on_one_batch() {
    let (first, last) = overfit("byol", &["task=\"byol\""], 30);
    assert!(last < 0.6 * first, "{first} → {last}");
}

fn run(task: &str, dir: &std::path::Path, stop_after: Option<u64>, resume: bool) -> f32 {
    let task = format!("task=\"{task}\"");
    small_run(
        dir,
        &[&task, "steps=8", "seed=5", "eval_every=4"],
        stop_after,
        resume,
    )
    .final_loss
}

#[test]
fn both_methods_resume_bitwise() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    for task in ["simclr", "byol"] {
        let (a, b) = (tmp.path().join(task), tmp.path().join(format!("{task}-r")));
        let straight = run(task, &a, None, false);
        run(task, &b, Some(4), false);
        let resumed = run(task, &b, None, true);
        assert_eq!(straight.to_bits(), resumed.to_bits(), "{task}");
        let rows = |p: &std::path::Path| -> Vec<String> {
            pretext::engine::metrics::read(&p.join("metrics.jsonl"))
                .unwrap()
                .iter()
                .map(|v| format!("{} {} {} {}", v["step"], v["loss"], v["knn"], v["tau"]))
                .collect()
        };
        assert_eq!(rows(&a), rows(&b), "{task}");
        // The k-NN monitor measured at the start, at step 4 and at the end.
        let measured: Vec<u64> = pretext::engine::metrics::read(&a.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .filter(|v| v["knn"].is_number())
            .map(|v| v["step"].as_u64().unwrap())
            .collect();
        assert_eq!(measured, vec![0, 4, 8], "{task}");
        let wa = std::fs::read(a.join("encoder.safetensors")).unwrap();
        let wb = std::fs::read(b.join("encoder.safetensors")).unwrap();
        assert!(
            wa == wb,
            "{task}: final encoder weights differ after resume"
        );
    }
}

#[test]
fn the_knn_monitor_equals_transfer_on_the_same_subset() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("sim");
    ok(&[
        "pretrain",
        "--task",
        "simclr",
        "--data",
        "builtin:fashion-mnist-demo",
        "--out",
        run.to_str().unwrap(),
        "--set",
        "steps=6",
        "--set",
        "eval_every=3",
        "--set",
        "width=8",
        "--set",
        "batch_size=32",
        "--set",
        "seed=2",
        "-q",
    ]);
    let rows = pretext::engine::metrics::read(&run.join("metrics.jsonl")).unwrap();
    let knn: Vec<(u64, f64)> = rows
        .iter()
        .filter_map(|r| Some((r["step"].as_u64()?, r.get("knn")?.as_f64()?)))
        .collect();
    assert_eq!(
        knn.iter().map(|k| k.0).collect::<Vec<_>>(),
        vec![0, 3, 6],
        "{rows:?}"
    );
    let stdout = ok(&[
        "transfer",
        "--from",
        run.to_str().unwrap(),
        "--protocol",
        "knn",
        "--labels-per-class",
        "100",
        "--set",
        "test_limit=1000",
        "--set",
        "eval_on=validation",
        "--set",
        "seed=2",
    ]);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("accuracy: "))
        .unwrap_or_else(|| panic!("{stdout}"));
    let acc: f64 = line["accuracy: ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let last = knn.last().unwrap().1;
    assert!(
        (acc - last).abs() < 1e-4,
        "transfer {acc} vs monitor {last}"
    );
}
