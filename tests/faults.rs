//! Faults a long run meets: NaN losses, SIGKILL at any moment (also halfway through a checkpoint),
//! a full disk and a read-only output directory. Real processes, real files, real Fashion-MNIST.

mod common;

use common::build;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use burn::prelude::Device;
use pretext::commands::pretrain::{pretrain, PretrainRequest};
use pretext::config::{resolve, PretrainConfig};
use pretext::data::augment::Img;
use pretext::data::rngs::BatchRngs;
use pretext::engine::checkpoint::{latest_checkpoint, save_encoder};
use pretext::engine::replicas::Parts;
use pretext::nn::input::InputSpec;
use pretext::tasks::{self, rotation};
use rand::{Rng, SeedableRng};

fn config(sets: &[&str]) -> PretrainConfig {
    let mut all = vec![
        "width=8",
        "batch_size=16",
        "warmup_steps=0",
        "log_every=1",
        "checkpoint_every=4",
        "data=\"builtin:fashion-mnist-demo\"",
    ];
    all.extend_from_slice(sets);
    let all: Vec<String> = all.into_iter().map(String::from).collect();
    resolve(None, &all, &tasks::names()).unwrap()
}

fn encoder_bytes(task: &dyn tasks::ImageTrainer, dir: &Path, name: &str) -> Vec<u8> {
    let path = dir.join(name);
    save_encoder(&task.encoder(), &path).unwrap();
    std::fs::read(path).unwrap()
}

/// Everything a checkpoint holds (model, every optimiser, task state), file by file.
fn checkpoint_files(task: &dyn tasks::ImageTrainer, dir: &Path) -> Vec<(String, Vec<u8>)> {
    std::fs::create_dir_all(dir).unwrap();
    task.save(dir).unwrap();
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().into_string().unwrap();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    files
}

#[test]
fn a_nan_step_is_skipped_and_leaves_weights_and_batchnorm_untouched() {
    let mut ds = pretext::commands::demo::builtin_dataset().unwrap();
    ds.train = ds.train.take(8);
    let cfg = config(&["on_nonfinite=\"skip\""]);
    let input = InputSpec::from_images(&ds.train).unwrap();
    let mut task = build("rotation", &cfg, &input);
    let imgs: Vec<Img> = (0..8)
        .map(|i| Img::from_u8(1, 28, 28, &ds.train.image(i).unwrap()))
        .collect();
    let batch = rotation::make_batch(&imgs, &Default::default(), &input, &BatchRngs::new(0, 0));
    let tmp = tempfile::tempdir().unwrap();
    let first = task.step(Box::new(batch.clone()), 0, 1e-3);
    assert!(!first.skipped && first.loss.is_finite());
    let before = encoder_bytes(task.as_ref(), tmp.path(), "a.safetensors");
    let state_before = checkpoint_files(task.as_ref(), &tmp.path().join("before"));
    // A batch of NaN pixels (what a corrupt input or an overflow upstream produces).
    let mut poisoned = batch.clone();
    poisoned.images.iter_mut().for_each(|v| *v = f32::NAN);
    let stats = task.step(Box::new(poisoned), 1, 1e-3);
    assert!(stats.skipped, "loss {} should be skipped", stats.loss);
    let after = encoder_bytes(task.as_ref(), tmp.path(), "b.safetensors");
    assert!(
        before == after,
        "a skipped step changed the encoder (weights or running statistics)"
    );
    assert!(
        state_before == checkpoint_files(task.as_ref(), &tmp.path().join("after")),
        "a skipped step changed the model or the optimiser state"
    );
    // Training goes on normally afterwards.
    for step in 2..5 {
        let s = task.step(Box::new(batch.clone()), step, 1e-3);
        assert!(!s.skipped && s.loss.is_finite(), "loss {}", s.loss);
    }
    assert!(before != encoder_bytes(task.as_ref(), tmp.path(), "c.safetensors"));
}

#[test]
fn a_nan_in_either_replica_skips_the_whole_step() {
    let mut ds = pretext::commands::demo::builtin_dataset().unwrap();
    ds.train = ds.train.take(8);
    let cfg = config(&["on_nonfinite=\"skip\""]);
    let input = InputSpec::from_images(&ds.train).unwrap();
    let mut task = build("rotation", &cfg, &input);
    task.set_replicas(2);
    let imgs: Vec<Img> = (0..8)
        .map(|i| Img::from_u8(1, 28, 28, &ds.train.image(i).unwrap()))
        .collect();
    let halves: Vec<_> = [0..4, 4..8]
        .into_iter()
        .map(|r| rotation::make_batch(&imgs[r], &Default::default(), &input, &BatchRngs::new(0, 0)))
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let first = task.step(Box::new(Parts(halves.clone())), 0, 1e-3);
    assert!(!first.skipped && first.loss.is_finite());
    assert_eq!(first.items, 8, "both halves counted");
    // NaN pixels in the leader's half (it returns before its update while the other replica
    // waits for it), then in the other half (the leader waits in vain).
    for (step, poisoned_part) in [(1, 0), (2, 1)] {
        let state = checkpoint_files(task.as_ref(), &tmp.path().join(format!("b{step}")));
        let mut parts = halves.clone();
        parts[poisoned_part]
            .images
            .iter_mut()
            .for_each(|v| *v = f32::NAN);
        let stats = task.step(Box::new(Parts(parts)), step, 1e-3);
        assert!(stats.skipped, "part {poisoned_part}: loss {}", stats.loss);
        assert!(
            state == checkpoint_files(task.as_ref(), &tmp.path().join(format!("a{step}"))),
            "a step skipped for a NaN in part {poisoned_part} changed the model or optimiser"
        );
    }
    let s = task.step(Box::new(Parts(halves)), 3, 1e-3);
    assert!(!s.skipped && s.loss.is_finite(), "loss {}", s.loss);
}

#[test]
fn a_gan_step_with_nan_restores_both_networks_and_both_optimisers() {
    let mut ds = pretext::commands::demo::builtin_dataset().unwrap();
    ds.train = ds.train.take(8);
    let cfg = config(&[
        "task=\"superres\"",
        "on_nonfinite=\"skip\"",
        "superres.content_only_steps=0",
    ]);
    let input = InputSpec::from_images(&ds.train).unwrap();
    let mut task = build("superres", &cfg, &input);
    let imgs: Vec<Img> = (0..8)
        .map(|i| Img::from_u8(1, 28, 28, &ds.train.image(i).unwrap()))
        .collect();
    let batch = task.make_batch()(&imgs, &[], &BatchRngs::new(0, 0));
    let tmp = tempfile::tempdir().unwrap();
    for step in 0..2 {
        let s = task.step(batch.clone(), step, 1e-3);
        assert!(!s.skipped && s.loss.is_finite(), "loss {}", s.loss);
    }
    let before = checkpoint_files(task.as_ref(), &tmp.path().join("before"));
    let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"optim-generator.bpk") && names.contains(&"optim-discriminator.bpk"),
        "{names:?}"
    );
    // An exploding learning rate: the first such update overflows the weights (its own losses
    // may still be finite), the next step's losses are NaN. A skipped step — discriminator
    // phase, generator phase and both optimisers — must leave every file as it was.
    let mut before = before;
    let mut skipped = false;
    for step in 2..6 {
        let stats = task.step(batch.clone(), step, 1e35);
        let after = checkpoint_files(task.as_ref(), &tmp.path().join(format!("after{step}")));
        if stats.skipped {
            assert!(
                before == after,
                "a skipped GAN step changed a network or an optimiser"
            );
            skipped = true;
            break;
        }
        assert!(before != after, "an applied step changed nothing");
        before = after;
    }
    assert!(skipped, "lr 1e35 never produced a NaN step");
}

#[test]
fn a_gan_run_skipping_at_an_exploding_lr_stops_naming_the_kept_step() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("gan");
    let err = run(
        &dir,
        &[
            "task=\"superres\"",
            "superres.content_only_steps=0",
            "lr=1e35",
            "warmup_steps=0",
            "steps=30",
            "on_nonfinite=\"skip\"",
        ],
    )
    .expect_err("must give up")
    .to_string();
    assert!(err.contains("10 steps in a row"), "{err}");
    let kept: u64 = err
        .split("the weights are those of step ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("names the kept step: {err}"));
    assert!(err.contains(&format!("step {}", kept + 10)), "{err}");
    // The skipped steps still checkpointed on schedule (every 4 steps).
    let (_, state) = latest_checkpoint(&dir).unwrap().expect("a checkpoint");
    assert_eq!(state.step, (kept + 10) / 4 * 4, "{err}");
}

fn run(dir: &Path, sets: &[&str]) -> pretext::Result<pretext::engine::PretrainSummary> {
    let mut ds = pretext::commands::demo::builtin_dataset().unwrap();
    ds.train = ds.train.take(128);
    pretrain(PretrainRequest {
        config: config(sets),
        out: dir.to_path_buf(),
        device: Device::flex(),
        resume: false,
        dataset: Some(ds),
        skip_bad: false,
        stop_after: None,
        quiet: true,
    })
}

#[test]
fn a_diverging_run_stops_or_gives_up_skipping_with_the_step_named() {
    let tmp = tempfile::tempdir().unwrap();
    // lr 1e30 overflows the weights after the first update.
    let err = run(&tmp.path().join("stop"), &["lr=1e30", "steps=20"])
        .expect_err("must stop")
        .to_string();
    assert!(
        err.contains("step 2") && err.contains("loss is NaN") && err.contains("checkpoint"),
        "{err}"
    );
    let err = run(
        &tmp.path().join("skip"),
        &["lr=1e30", "steps=20", "on_nonfinite=\"skip\""],
    )
    .expect_err("must give up")
    .to_string();
    assert!(err.contains("10 steps in a row"), "{err}");
}

const KILL_RUN: &[&str] = &[
    "--task",
    "rotation",
    "--data",
    "builtin:fashion-mnist-demo",
    "--set",
    "steps=24",
    "--set",
    "checkpoint_every=1",
    "--set",
    "keep_checkpoints=2",
    "--set",
    "width=8",
    "--set",
    "batch_size=16",
    "--set",
    "limit=256",
    "--set",
    "log_every=1",
    "--set",
    "seed=5",
    "--quiet",
];

fn pretext_cmd(out: &Path, resume: bool) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pretext"));
    if resume {
        cmd.args(["pretrain", "--resume", out.to_str().unwrap(), "--quiet"]);
    } else {
        cmd.args(["pretrain", "--out", out.to_str().unwrap()])
            .args(KILL_RUN);
    }
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

/// The numbers of metrics.jsonl that must not depend on interruptions (not the timings).
fn metrics(run: &Path) -> Vec<(u64, String, String, String)> {
    pretext::engine::metrics::read(&run.join("metrics.jsonl"))
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["step"].as_u64().unwrap(),
                v["loss"].to_string(),
                v["lr"].to_string(),
                v["acc"].to_string(),
            )
        })
        .collect()
}

#[test]
fn sigkill_at_random_moments_then_resume_equals_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let straight = tmp.path().join("straight");
    let out = pretext_cmd(&straight, false).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let run = tmp.path().join("killed");
    // First a kill halfway through writing checkpoint 7 (model files written, state.json not).
    let out = pretext_cmd(&run, false)
        .env("PRETEXT_FAULT_KILL_IN_CHECKPOINT", "7")
        .output()
        .unwrap();
    assert!(!out.status.success(), "the fault hook must kill the run");
    let (_, state) = latest_checkpoint(&run).unwrap().expect("checkpoint 6");
    assert_eq!(
        state.step, 6,
        "the half-written checkpoint 7 is not the latest"
    );
    assert!(run.join("checkpoints/.tmp-step-00000007").exists());

    // Then SIGKILLs at random moments until the run completes.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(11);
    let mut kills = 0;
    let mut steps_at_kill = Vec::new();
    let mut finished = false;
    for attempt in 0..12 {
        let resume = run.join("config.toml").exists();
        let at_start = latest_checkpoint(&run).unwrap().map_or(0, |(_, s)| s.step);
        let mut child = pretext_cmd(&run, resume).spawn().unwrap();
        // Wait until this process has trained past its starting checkpoint, then kill it a
        // random moment later (mid-step, mid-checkpoint, mid-metrics write …).
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut exited = false;
        loop {
            if child.try_wait().unwrap().is_some() {
                exited = true;
                break;
            }
            let now = latest_checkpoint(&run)
                .ok()
                .flatten()
                .map_or(0, |(_, s)| s.step);
            if now > at_start || std::time::Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        if !exited && attempt < 8 {
            std::thread::sleep(Duration::from_millis(rng.gen_range(0..120)));
        }
        if exited || attempt >= 8 || child.try_wait().unwrap().is_some() {
            let out: Output = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "attempt {attempt}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            if run.join("encoder.safetensors").exists() {
                finished = true;
                break;
            }
            continue;
        }
        child.kill().unwrap(); // SIGKILL on unix
        child.wait().unwrap();
        kills += 1;
        if let Some((dir, state)) = latest_checkpoint(&run).unwrap() {
            assert!(dir.join("state.json").exists() && state.step <= 24);
            steps_at_kill.push(state.step);
        }
    }
    assert!(finished, "the run never completed");
    assert!(
        kills >= 3,
        "only {kills} kills landed; the run was too quick"
    );
    println!(
        "{kills} SIGKILLs + 1 kill inside a checkpoint write, then completed; \
         latest checkpoint after each kill: {steps_at_kill:?}"
    );
    // The kills landed while training progressed, not all before the first step.
    steps_at_kill.dedup();
    assert!(steps_at_kill.len() >= 3, "{steps_at_kill:?}");
    let a = std::fs::read(straight.join("encoder.safetensors")).unwrap();
    let b = std::fs::read(run.join("encoder.safetensors")).unwrap();
    assert!(a == b, "final weights differ from the uninterrupted run");
    assert_eq!(metrics(&straight), metrics(&run));
    let leftovers: Vec<PathBuf> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// A small tmpfs mounted for the test (needs root; None with the reason printed otherwise).
struct Mount(PathBuf);

impl Mount {
    fn new(at: &Path, size: &str) -> Option<Mount> {
        std::fs::create_dir_all(at).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Mount(at.to_path_buf())),
            Ok(o) => {
                println!(
                    "SKIPPED: cannot mount a tmpfs ({}); the full-disk test needs root",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                println!("SKIPPED: cannot run mount ({e})");
                None
            }
        }
    }

    fn remount(&self, opt: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{opt}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {opt}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while f.write_all(&chunk).is_ok() {}
    let _ = f.sync_all();
    path
}

#[test]
fn full_disk_and_read_only_output_are_clear_errors_and_keep_the_last_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let Some(mount) = Mount::new(&tmp.path().join("disk"), "6m") else {
        return;
    };
    let run = mount.0.join("run");
    let args = |extra: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pretext"));
        cmd.args(["pretrain", "--out", run.to_str().unwrap()])
            .args(&KILL_RUN[..KILL_RUN.len() - 1])
            .args(extra);
        cmd
    };
    let out = args(&["--stop-after", "4"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (dir4, state) = latest_checkpoint(&run).unwrap().unwrap();
    assert_eq!(state.step, 4);
    let before: Vec<u8> = std::fs::read(dir4.join("model.bpk")).unwrap();

    // Full disk: the run stops with an error naming a file and the reason.
    let filler = fill(&mount.0);
    let out = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["pretrain", "--resume", run.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("No space left on device") && stderr.contains(run.to_str().unwrap()),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    println!("full disk: {}", stderr.trim());
    let (dir, state) = latest_checkpoint(&run).unwrap().unwrap();
    assert_eq!((state.step, &dir), (4, &dir4));
    assert_eq!(std::fs::read(dir.join("model.bpk")).unwrap(), before);

    // Space for the config and metrics but not for a whole checkpoint: the error comes from the
    // checkpoint write, its partial directory is removed, `latest` still names step 4.
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&filler)
        .unwrap();
    f.set_len(f.metadata().unwrap().len() - 160 * 1024).unwrap();
    drop(f);
    let out = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["pretrain", "--resume", run.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("No space left on device") && stderr.contains("checkpoints"),
        "{stderr}"
    );
    println!("full disk during a checkpoint: {}", stderr.trim());
    let (dir, state) = latest_checkpoint(&run).unwrap().unwrap();
    assert_eq!((state.step, &dir), (4, &dir4));
    assert_eq!(std::fs::read(dir.join("model.bpk")).unwrap(), before);
    assert!(!run.join("checkpoints/.tmp-step-00000005").exists());
    std::fs::remove_file(filler).unwrap();

    // Read-only output: same.
    mount.remount("ro");
    let out = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["pretrain", "--resume", run.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("Read-only file system"), "{stderr}");
    println!("read-only: {}", stderr.trim());
    mount.remount("rw");
    assert_eq!(latest_checkpoint(&run).unwrap().unwrap().1.step, 4);

    // With space back, the run resumes from step 4 and completes.
    let out = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(["pretrain", "--resume", run.to_str().unwrap(), "--quiet"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(run.join("encoder.safetensors").exists());
}

/// Wrong values on the command line: one line naming the key or flag and what is expected, exit 2.
#[test]
fn bad_values_give_one_line_errors_with_exit_code_2() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("r");
    let out = out.to_str().unwrap();
    let d = "builtin:fashion-mnist-demo";
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "pretrain",
                "--data",
                d,
                "--out",
                out,
                "--set",
                "batch_size=-1",
            ],
            "batch_size",
        ),
        (
            &["pretrain", "--data", d, "--out", out, "--set", "steps=-5"],
            "steps",
        ),
        (
            &["pretrain", "--data", d, "--out", out, "--set", "lr=abc"],
            "lr",
        ),
        (
            &["pretrain", "--data", d, "--out", out, "--set", "lr=inf"],
            "lr",
        ),
        (
            &[
                "pretrain",
                "--data",
                d,
                "--out",
                out,
                "--set",
                "width=100000",
            ],
            "width",
        ),
        (
            &[
                "pretrain",
                "--data",
                d,
                "--out",
                out,
                "--set",
                "on_nonfinite=maybe",
            ],
            "on_nonfinite",
        ),
        (
            &["pretrain", "--data", d, "--out", out, "--set", "limit=5"],
            "batch_size",
        ),
        (
            &[
                "pretrain",
                "--data",
                d,
                "--out",
                out,
                "--task",
                "context",
                "--set",
                "context.patch=-3",
            ],
            "context.patch",
        ),
        (
            &[
                "pretrain",
                "--data",
                d,
                "--out",
                out,
                "--task",
                "context",
                "--set",
                "context.patch=20",
            ],
            "context.patch",
        ),
        (
            &[
                "pretrain",
                "--data",
                d,
                "--out",
                out,
                "--config",
                "/nonexistent.toml",
            ],
            "/nonexistent.toml",
        ),
        (&["pretrain", "--data", "nope:/x", "--out", out], "nope"),
        (
            &["pretrain", "--data", "idx:/nonexistent", "--out", out],
            "/nonexistent",
        ),
        (
            &[
                "transfer",
                "--from",
                "random",
                "--data",
                d,
                "--labels-per-class",
                "0",
            ],
            "labels-per-class",
        ),
        (
            &[
                "transfer",
                "--from",
                "random",
                "--data",
                d,
                "--labels-per-class",
                "100000",
            ],
            "600",
        ),
        (
            &[
                "transfer",
                "--from",
                "random",
                "--data",
                d,
                "--set",
                "knn_k=0",
                "--protocol",
                "knn",
            ],
            "knn_k",
        ),
        (
            &[
                "transfer",
                "--from",
                "random",
                "--data",
                d,
                "--set",
                "probe_steps=0",
            ],
            "probe_steps",
        ),
        (
            &[
                "transfer",
                "--from",
                "random",
                "--data",
                d,
                "--set",
                "finetune_lr=-1",
                "--protocol",
                "finetune",
            ],
            "finetune_lr",
        ),
        (
            &[
                "transfer", "--from", "random", "--data", d, "--set", "stage=9",
            ],
            "stage",
        ),
    ];
    for (args, needle) in cases {
        let o = Command::new(env!("CARGO_BIN_EXE_pretext"))
            .args(*args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
}
