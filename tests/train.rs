//! Training-loop properties on real Fashion-MNIST images (the built-in subset of the real files).

mod common;

use common::{config, ok, serial, shared_data, small_dataset, small_run, step_rows};

use burn::prelude::Device;
use pretext::commands::bench::layout::flat;
use pretext::commands::pretrain::{pretrain, PretrainRequest};
use pretext::config::{resolve, PretrainConfig};
use pretext::data::augment::Img;
use pretext::data::rngs::BatchRngs;
use pretext::data::Dataset;
use pretext::nn::input::InputSpec;
use pretext::tasks::{self, TaskContext};

#[test]
fn overfitting_one_batch_drives_rotation_loss_near_zero() {
    let _serial = serial();
    let ds = small_dataset(8);
    let cfg = config(&[
        "lr=0.003",
        "rotation.crop_scale_min=1.0",
        "rotation.flip=false",
    ]);
    let input = InputSpec::from_images(&ds.train).unwrap();
    let device = Device::flex().autodiff();
    let mut task = pretext::platform::device::seeded(&device, 0, || {
        let tasks::Build::Image(build) = tasks::find("rotation").unwrap().build else {
            unreachable!()
        };
        build(&TaskContext {
            config: &cfg,
            input: &input,
            device: device.clone(),
        })
    })
    .unwrap();
    let imgs: Vec<Img> = (0..8)
        .map(|i| Img::from_u8(1, 28, 28, &ds.train.image(i).unwrap()))
        .collect();
    let make = task.make_batch();
    let batch = make(&imgs, &[], &BatchRngs::new(0, 0));
    assert_eq!(flat(batch.as_ref()).unwrap().b, 32);
    let first = task.step(batch.clone(), 0, 3e-3).loss;
    let mut last = first;
    for step in 1..=80 {
        last = task.step(batch.clone(), step, 3e-3).loss;
    }
    assert!(
        first > 1.0,
        "initial loss {first} should be near ln 4 = 1.386"
    );
    assert!(
        last < 0.05,
        "loss after 80 steps on one batch: {last} (started at {first})"
    );
}

fn run(
    dir: &std::path::Path,
    stop_after: Option<u64>,
    resume: bool,
) -> pretext::engine::PretrainSummary {
    run_with(dir, stop_after, resume, 1)
}

fn run_with(
    dir: &std::path::Path,
    stop_after: Option<u64>,
    resume: bool,
    replicas: usize,
) -> pretext::engine::PretrainSummary {
    run_set(dir, stop_after, resume, &[&format!("replicas={replicas}")])
}

fn run_set(
    dir: &std::path::Path,
    stop_after: Option<u64>,
    resume: bool,
    sets: &[&str],
) -> pretext::engine::PretrainSummary {
    let mut all = vec!["steps=8", "seed=7"];
    all.extend_from_slice(sets);
    small_run(dir, &all, stop_after, resume)
}

#[test]
fn resume_gives_the_same_weights_and_losses_as_one_uninterrupted_run() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let one = resumed_equals_straight(&tmp.path().join("one"), 1);
    // Two replicas, each stepping on half of every batch: as exact, and the same run to float
    // rounding (the batch's views do not depend on the cut, batch norm takes the whole batch's
    // statistics).
    let two = resumed_equals_straight(&tmp.path().join("two"), 2);
    assert!(
        ((one - two) / one).abs() < 1e-5,
        "replicas=2 {two} vs replicas=1 {one}"
    );
    // Really two parts: with per-part batch-norm statistics the run is another.
    let apart = run_set(
        &tmp.path().join("apart"),
        None,
        false,
        &["replicas=2", "sync_bn=false"],
    );
    assert!(
        ((one - apart.final_loss) / one).abs() > 1e-4,
        "replicas=2 with sync_bn=false {} vs replicas=1 {one}",
        apart.final_loss
    );
}

/// Runs 8 steps straight and as 4 + resumed 4 with `replicas`; the final loss.
fn resumed_equals_straight(dir: &std::path::Path, replicas: usize) -> f32 {
    let (a, b) = (dir.join("straight"), dir.join("resumed"));
    let straight = run_with(&a, None, false, replicas);
    let half = run_with(&b, Some(4), false, replicas);
    assert_eq!(half.steps_done, 4);
    assert!(!half.completed);
    let resumed = run_with(&b, None, true, replicas);
    assert_eq!(resumed.steps_done, 8);
    assert_eq!(
        straight.final_loss.to_bits(),
        resumed.final_loss.to_bits(),
        "{} vs {}",
        straight.final_loss,
        resumed.final_loss
    );
    let losses = |p: &std::path::Path| -> Vec<(u64, f64)> {
        pretext::engine::metrics::read(&p.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .filter(|v| v.get("loss").is_some()) // not the k-NN monitor's rows
            .map(|v| (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap()))
            .collect()
    };
    let la = losses(&a);
    assert_eq!(la.len(), 8);
    assert_eq!(la, losses(&b));
    let wa = std::fs::read(a.join("encoder.safetensors")).unwrap();
    let wb = std::fs::read(b.join("encoder.safetensors")).unwrap();
    assert!(wa == wb, "final encoder weights differ after resume");
    straight.final_loss
}

#[test]
fn a_half_written_checkpoint_is_never_loaded() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    run(&dir, Some(4), false);
    // A crash during the next checkpoint leaves a temporary directory with partial files.
    let partial = dir.join("checkpoints/.tmp-step-00000008");
    std::fs::create_dir_all(&partial).unwrap();
    std::fs::write(partial.join("model.bpk"), b"half").unwrap();
    let (ckpt, state) = pretext::engine::checkpoint::latest_checkpoint(&dir)
        .unwrap()
        .unwrap();
    assert_eq!(state.step, 4);
    assert!(ckpt.ends_with("step-00000004"));
    let resumed = run(&dir, None, true);
    assert_eq!(resumed.steps_done, 8);
    assert!(
        !partial.exists(),
        "the stale temporary checkpoint is cleaned up"
    );
}

#[test]
fn a_corrupt_checkpoint_is_a_clear_error() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("r");
    run(&dir, Some(4), false);
    let model = dir.join("checkpoints/step-00000004/model.bpk");
    let bytes = std::fs::read(&model).unwrap();
    std::fs::write(&model, &bytes[..bytes.len() / 2]).unwrap();
    let err = pretrain(PretrainRequest {
        config: config(&["steps=8"]),
        out: dir.clone(),
        device: Device::flex(),
        resume: true,
        dataset: Some(small_dataset(96)),
        skip_bad: false,
        stop_after: None,
        quiet: true,
    })
    .expect_err("a truncated checkpoint must not load");
    assert!(err.to_string().contains("model.bpk"), "{err}");
}

#[test]
fn saving_the_same_encoder_twice_gives_identical_files() {
    let device = Device::flex();
    let enc = pretext::platform::device::seeded(&device, 1, || {
        pretext::nn::BackboneSpec {
            kind: pretext::nn::BackboneKind::Convnet,
            in_channels: 1,
            width: 8,
            patch: 0,
        }
        .init(&device)
    });
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (
        tmp.path().join("a.safetensors"),
        tmp.path().join("b.safetensors"),
    );
    pretext::engine::checkpoint::save_encoder(&enc, &a).unwrap();
    pretext::engine::checkpoint::save_encoder(&enc, &b).unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    // And the weights load back into a fresh encoder of the same spec.
    let fresh = pretext::platform::device::seeded(&device, 2, || {
        pretext::nn::BackboneSpec {
            kind: pretext::nn::BackboneKind::Convnet,
            in_channels: 1,
            width: 8,
            patch: 0,
        }
        .init(&device)
    });
    let loaded = pretext::engine::checkpoint::load_encoder(fresh, &a).unwrap();
    pretext::engine::checkpoint::save_encoder(&loaded, &b).unwrap();
    assert!(std::fs::read(&a).unwrap() == std::fs::read(&b).unwrap());
    // Weights of another width do not fit: a clear error naming the file.
    let other = pretext::platform::device::seeded(&device, 2, || {
        pretext::nn::BackboneSpec {
            kind: pretext::nn::BackboneKind::Convnet,
            in_channels: 1,
            width: 4,
            patch: 0,
        }
        .init(&device)
    });
    let err = pretext::engine::checkpoint::load_encoder(other, &a).expect_err("shape mismatch");
    assert!(err.to_string().contains("a.safetensors"), "{err}");
}

#[test]
fn shipped_presets_parse() {
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/configs")).unwrap() {
        let path = entry.unwrap().path();
        let cfg: PretrainConfig = resolve(Some(&path), &[], &tasks::names())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        cfg.validate().unwrap();
        assert!(tasks::find(&cfg.task).is_some(), "{}", path.display());
    }
}

/// A streamed set whose last file has an intact header but a cut-off body, placed after the
/// 10,000 images the input statistics read, so the failure happens inside the training loop.
fn streamed_with_a_corrupt_last_file(dir: &std::path::Path, skip_bad: bool) -> Dataset {
    use pretext::data::folder::Streamed;
    use pretext::data::ImageSet;
    let good = dir.join("good.png");
    image::RgbImage::from_fn(16, 16, |x, y| {
        image::Rgb([(x * 16) as u8, (y * 16) as u8, 99])
    })
    .save(&good)
    .unwrap();
    let bad = dir.join("corrupt.png");
    image::RgbImage::from_fn(64, 64, |x, y| {
        image::Rgb([(x * 97 + y * 13) as u8, (x ^ y) as u8, (x * y * 7) as u8])
    })
    .save(&bad)
    .unwrap();
    let bytes = std::fs::read(&bad).unwrap();
    std::fs::write(&bad, &bytes[..bytes.len() * 6 / 10]).unwrap();
    let mut paths = vec![good; 10_015];
    paths.push(bad);
    let n = paths.len();
    let mut train = ImageSet::in_memory(Vec::new(), None, n, 3, 16, 16);
    train.stream = Some(std::sync::Arc::new(Streamed::new(paths, 16, 3, skip_bad)));
    Dataset {
        name: "streamed".into(),
        train,
        test: None,
        classes: Vec::new(),
        skipped: 0,
    }
}

#[test]
fn a_file_that_stops_decoding_mid_run_stops_training_with_a_checkpoint() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let n = 10_016;
    // a seed whose batch 2 (the third step) holds the corrupt last image
    let seed = (0..20_000u64)
        .find(|&s| pretext::data::loader::batch_indices(n, 16, true, s, 2).contains(&(n - 1)))
        .unwrap();
    let cfg = config(&[
        "steps=6",
        &format!("seed={seed}"),
        "checkpoint_every=100",
        "image_size=16",
    ]);
    let dir = tmp.path().join("run");
    let err = pretrain(PretrainRequest {
        config: cfg.clone(),
        out: dir.clone(),
        device: Device::flex(),
        resume: false,
        dataset: Some(streamed_with_a_corrupt_last_file(tmp.path(), false)),
        skip_bad: false,
        stop_after: None,
        quiet: true,
    })
    .expect_err("a corrupt image must stop training");
    let msg = err.to_string();
    assert!(
        msg.contains("step 2") && msg.contains("corrupt.png") && msg.contains("--skip-bad"),
        "{msg}"
    );
    let (_, state) = pretext::engine::checkpoint::latest_checkpoint(&dir)
        .unwrap()
        .expect("the steps done are kept");
    assert_eq!(state.step, 2);

    // with skip_bad the next good image stands in and the run completes
    let summary = pretrain(PretrainRequest {
        config: cfg,
        out: tmp.path().join("run2"),
        device: Device::flex(),
        resume: false,
        dataset: Some(streamed_with_a_corrupt_last_file(tmp.path(), true)),
        skip_bad: true,
        stop_after: None,
        quiet: true,
    })
    .unwrap();
    assert!(summary.completed && summary.final_loss.is_finite());
}

// ---- generative tasks (GANs): end to end through the binary, and resume ----

const GAN_SMALL: &[&str] = &[
    "--set",
    "limit=128",
    "--set",
    "steps=6",
    "--set",
    "batch_size=8",
    "--set",
    "log_every=1",
    "--set",
    "width=8",
    "--set",
    "warmup_steps=2",
    "--quiet",
];

/// The metrics every GAN task logs, each finite, on every logged step.
fn assert_gan_metrics(run: &std::path::Path, steps: usize) {
    let rows = step_rows(run);
    assert_eq!(rows.len(), steps);
    for row in &rows {
        for key in ["loss", "g_adv", "d_loss", "d_acc_real", "d_acc_fake"] {
            let v = row[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} missing in {row}"));
            assert!(v.is_finite(), "{key} = {v}");
        }
    }
}

#[test]
fn superres_pretrains_on_fashion_mnist_and_reports_psnr_against_bilinear() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("sr");
    let data = format!("idx:{}", shared_data("fashion-mnist"));
    let mut args = vec![
        "pretrain",
        "--task",
        "superres",
        "--data",
        &data,
        "--out",
        run.to_str().unwrap(),
        "--set",
        "superres.scale=4",
        "--set",
        "superres.content_only_steps=3",
    ];
    args.extend_from_slice(GAN_SMALL);
    let stdout = ok(&args);
    assert!(stdout.contains("held-out test images: psnr"), "{stdout}");
    assert_gan_metrics(&run, 6);
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    let eval = summary["eval"].as_array().unwrap();
    let names: Vec<&str> = eval.iter().map(|e| e[0].as_str().unwrap()).collect();
    assert_eq!(names, ["psnr", "ssim", "psnr_bilinear", "ssim_bilinear"]);
    let png = image::open(run.join("samples-superres.png")).unwrap();
    assert!(
        png.width() > png.height() / 2,
        "4 columns: low-res | bilinear | generated | truth"
    );
    // The encoder is a plain backbone: transfer reads it unchanged.
    let out = ok(&[
        "transfer",
        "--from",
        run.to_str().unwrap(),
        "--protocol",
        "knn",
        "--labels-per-class",
        "2",
        "--set",
        "test_limit=100",
        "--quiet",
    ]);
    assert!(out.contains("accuracy: "), "{out}");
}

#[test]
fn inpaint_pretrains_on_colour_photos_and_writes_a_sample_grid() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("inp");
    let data = format!("folder:{}", shared_data("photos"));
    let mut args = vec![
        "pretrain",
        "--task",
        "inpaint",
        "--data",
        &data,
        "--out",
        run.to_str().unwrap(),
        "--set",
        "inpaint.mask=\"blobs\"",
    ];
    args.extend_from_slice(GAN_SMALL);
    ok(&args);
    assert_gan_metrics(&run, 6);
    let png = image::open(run.join("samples-inpaint.png")).unwrap();
    assert!(
        png.height() > png.width(),
        "8 rows of masked | filled | truth"
    );
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["backbone"]["in_channels"], 3);
    // where it ran: threads and the vector width the CPU kernels picked
    let device = info["device"].as_str().unwrap();
    assert!(
        device.starts_with("cpu (")
            && device.ends_with(&format!("{})", pretext::platform::device::cpu_simd())),
        "{device}"
    );
    assert!(run.join("encoder.safetensors").exists());
}

fn gan_run(
    dir: &std::path::Path,
    stop_after: Option<u64>,
    resume: bool,
) -> pretext::engine::PretrainSummary {
    pretrain(PretrainRequest {
        config: config(&[
            "task=\"inpaint\"",
            "steps=6",
            "seed=3",
            "checkpoint_every=3",
            "inpaint.mask=\"squares\"",
            // Both GAN phases meet across replicas.
            "replicas=2",
        ]),
        out: dir.to_path_buf(),
        device: Device::flex(),
        resume,
        dataset: Some(small_dataset(64)),
        skip_bad: false,
        stop_after,
        quiet: true,
    })
    .unwrap()
}

#[test]
fn a_resumed_gan_run_matches_an_uninterrupted_one() {
    let _serial = serial();
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("straight"), tmp.path().join("resumed"));
    let straight = gan_run(&a, None, false);
    let half = gan_run(&b, Some(3), false);
    assert_eq!(half.steps_done, 3);
    let ckpt = b.join("checkpoints/step-00000003");
    for f in [
        "model.bpk",
        "optim-generator.bpk",
        "optim-discriminator.bpk",
        "encoder.safetensors",
    ] {
        assert!(ckpt.join(f).exists(), "{f} missing from the checkpoint");
    }
    let resumed = gan_run(&b, None, true);
    assert_eq!(resumed.steps_done, 6);
    let rows = |p: &std::path::Path| -> Vec<String> {
        pretext::engine::metrics::read(&p.join("metrics.jsonl"))
            .unwrap()
            .iter()
            .map(|v| {
                let (s, l, d, g) = (&v["step"], &v["loss"], &v["d_loss"], &v["g_adv"]);
                format!("{s} {l} {d} {g} {}", v["knn"])
            })
            .collect()
    };
    assert_eq!(step_rows(&a).len(), 6);
    assert_eq!(rows(&a), rows(&b));
    assert_eq!(straight.final_loss.to_bits(), resumed.final_loss.to_bits());
    let wa = std::fs::read(a.join("encoder.safetensors")).unwrap();
    let wb = std::fs::read(b.join("encoder.safetensors")).unwrap();
    assert!(wa == wb, "final encoder weights differ after resume");
}

#[test]
fn colorize_pretrains_on_photos_and_transfer_feeds_the_encoder_lightness() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("col");
    let data = format!("folder:{}", shared_data("photos"));
    let mut args = vec![
        "pretrain",
        "--task",
        "colorize",
        "--data",
        &data,
        "--out",
        run.to_str().unwrap(),
    ];
    args.extend_from_slice(GAN_SMALL);
    ok(&args);
    let rows = step_rows(&run);
    assert_eq!(rows.len(), 6);
    assert!(rows.iter().all(|r| r["loss"].as_f64().unwrap().is_finite()));
    assert!(run.join("samples-colorize.png").exists());
    assert!(run.join("checkpoints/latest").exists());
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("run.json")).unwrap()).unwrap();
    assert_eq!(info["backbone"]["in_channels"], 1);
    assert_eq!(info["input_transform"], "lightness");
    // A labelled colour set (the photos split into two classes): transfer converts it to L.
    let labelled = tmp.path().join("labelled");
    let mut files: Vec<_> = std::fs::read_dir(shared_data("photos"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for (i, f) in files.iter().enumerate() {
        let class = labelled.join(if i % 2 == 0 { "even" } else { "odd" });
        std::fs::create_dir_all(&class).unwrap();
        std::fs::copy(f, class.join(f.file_name().unwrap())).unwrap();
    }
    let out = ok(&[
        "transfer",
        "--from",
        run.to_str().unwrap(),
        "--data",
        &format!("folder:{}", labelled.display()),
        "--protocol",
        "knn",
        "--labels-per-class",
        "2",
        "--set",
        "knn_k=3",
        "--quiet",
    ]);
    assert!(out.contains("accuracy: "), "{out}");
}

#[test]
fn colorize_refuses_grayscale_data() {
    let tmp = tempfile::tempdir().unwrap();
    let data = format!("idx:{}", shared_data("fashion-mnist"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args([
            "pretrain", "--task", "colorize", "--data", &data, "--set", "limit=64",
        ])
        .arg("--out")
        .arg(tmp.path().join("c"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("colorize needs colour (3-channel RGB) images"),
        "{err}"
    );
}
