//! Pretraining across processes under `mpirun` (the `mpi` feature; `.ci/run` builds it and
//! installs Open MPI). Two ranks on localhost, one thread each.
#![cfg(feature = "mpi")]

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{austen_slice, ok, serial, TINY_LM};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pretext")
}

/// `mpirun -np n pretext args…` (as root in CI, more ranks than cores allowed), one thread per
/// rank.
fn mpirun(n: usize, args: &[&str]) -> Command {
    mpirun_threads(n, "1", args)
}

/// [`mpirun`] with `threads` compute threads per rank.
fn mpirun_threads(n: usize, threads: &str, args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args([
        "--allow-run-as-root",
        "--oversubscribe",
        "--bind-to",
        "none",
        "-x",
        &format!("RAYON_NUM_THREADS={threads}"),
        "-np",
        &n.to_string(),
        bin(),
    ])
    .args(args)
    .env("OMPI_MCA_rmaps_base_oversubscribe", "1");
    c
}

fn must(out: Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{what} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn step_losses(run: &Path) -> Vec<(u64, f64)> {
    metrics(run)
        .iter()
        .filter_map(|m| Some((m.get("step")?.as_u64()?, m.get("loss")?.as_f64()?)))
        .collect()
}

/// Two ranks of one part each give the losses of one process stepping the same global batch
/// as two replicas (the same parts, the same summed gradient), step by step.
#[test]
fn two_ranks_train_a_language_model_like_one_process() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let txt = austen_slice(dir.path(), 60_000);
    let data = format!("text:{}", txt.display());
    let mut common: Vec<&str> = vec!["pretrain", "--task", "causal-lm", "--data", &data];
    common.extend_from_slice(TINY_LM);
    common.extend_from_slice(&[
        "--set",
        "steps=12",
        "--set",
        "warmup_steps=2",
        "--set",
        "lr=0.003",
        "--set",
        "dropout=0.0",
        "--set",
        "log_every=1",
        "--set",
        "eval_every=100",
        "--set",
        "val_fraction=0.1",
        "--set",
        "rank_check_every=4",
        "-q",
    ]);
    let one = dir.path().join("one");
    let mut a = common.clone();
    a.extend_from_slice(&["--set", "replicas=2", "--out", one.to_str().unwrap()]);
    ok(&a);
    let two = dir.path().join("two");
    let mut a = common.clone();
    a.extend_from_slice(&["--set", "replicas=1", "--out", two.to_str().unwrap()]);
    let out = must(mpirun(2, &a).output().unwrap(), "mpirun -np 2");
    assert_eq!(
        out.matches("finished").count(),
        1,
        "rank 0 alone reports: {out}"
    );
    let (l1, l2) = (step_losses(&one), step_losses(&two));
    assert_eq!(l1.len(), 12, "{l1:?}");
    assert_eq!(
        l1.iter().map(|x| x.0).collect::<Vec<_>>(),
        l2.iter().map(|x| x.0).collect::<Vec<_>>()
    );
    for ((s, a), (_, b)) in l1.iter().zip(&l2) {
        assert!(
            ((a - b) / a).abs() < 1e-3,
            "step {s}: one process {a}, two ranks {b}\n{l1:?}\n{l2:?}"
        );
    }
    assert!(l2[11].1 < l2[0].1, "it learns: {l2:?}");
    // Rank 0 alone wrote the run: a complete one.
    for f in [
        "config.toml",
        "run.json",
        "tokenizer.json",
        "encoder.safetensors",
        "summary.json",
    ] {
        assert!(two.join(f).exists(), "{f} missing");
    }
}

/// A rotation run on two ranks (batch norm, its sums across ranks) checks at every step that
/// both ranks hold the same weights, and takes the steps one process with two replicas takes.
#[test]
fn two_ranks_keep_identical_weights_on_an_image_task() {
    ranks_match_one_process("rotation", "replicas=1", "replicas=2", "1");
}

/// Batch norm over the whole global batch: two ranks take the steps of one model.
#[test]
fn two_ranks_train_like_one_model() {
    ranks_match_one_process("rotation", "replicas=1", "replicas=1", "1");
}

/// SimCLR across ranks: NT-Xent over the all-gathered embeddings (every rank's negatives are the
/// whole global batch's) and batch norm summed across ranks, as one process with two replicas.
#[test]
fn two_ranks_train_simclr_like_one_process() {
    ranks_match_one_process("simclr", "replicas=1", "replicas=2", "1");
}

fn ranks_of(out: &Path) -> Vec<(u32, usize)> {
    let needle = out.to_str().unwrap();
    let mut found = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd);
        if !cmd.starts_with(bin()) || !cmd.contains(needle) {
            continue;
        }
        let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
        let rank = String::from_utf8_lossy(&env)
            .split('\0')
            .find_map(|kv| kv.strip_prefix("OMPI_COMM_WORLD_RANK=")?.parse().ok());
        if let Some(r) = rank {
            found.push((pid, r));
        }
    }
    found
}

/// Rank 1 killed mid-run: the job stops with an error, rank 0's last checkpoint is intact, and
/// the run resumes to the end with one process or with two.
#[test]
fn a_dead_rank_stops_the_job_and_the_run_resumes_with_one_or_two() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = format!("idx:{}", common::shared_data("fashion-mnist"));
    let run = dir.path().join("run");
    let args: Vec<&str> = vec![
        "pretrain",
        "--task",
        "rotation",
        "--data",
        &data,
        "--set",
        "limit=512",
        "--set",
        "width=8",
        "--set",
        "batch_size=16",
        "--set",
        "steps=400",
        "--set",
        "checkpoint_every=2",
        "--set",
        "eval_every=0",
        "--set",
        "workers=1",
        "--set",
        "replicas=1",
        "-q",
        "--out",
    ];
    let mut a = args.clone();
    a.push(run.to_str().unwrap());
    let job = mpirun(2, &a)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ckpts = run.join("checkpoints");
    let t0 = Instant::now();
    // Wait for a few checkpoints, then kill rank 1.
    loop {
        let n = std::fs::read_dir(&ckpts).map_or(0, |d| d.count());
        if n >= 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(300),
            "no checkpoints after 5 minutes"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let victim = ranks_of(&run)
        .into_iter()
        .find(|&(_, r)| r == 1)
        .expect("rank 1 running");
    Command::new("kill")
        .args(["-9", &victim.0.to_string()])
        .status()
        .unwrap();
    let out = job.wait_with_output().unwrap();
    assert!(!out.status.success(), "the job must fail when a rank dies");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("signal 9") || said.contains("Killed") || said.contains("killed"),
        "mpirun says which rank died: {said}"
    );
    eprintln!("what mpirun said when rank 1 was killed:\n{said}");
    // Resume with one process for a few steps, then with two to the end.
    let resume = ["pretrain", "--resume", run.to_str().unwrap(), "-q"];
    let mut one: Vec<&str> = resume.to_vec();
    one.extend_from_slice(&["--stop-after", "30"]);
    ok(&one);
    let mut two: Vec<&str> = resume.to_vec();
    two.extend_from_slice(&["--stop-after", "40"]);
    must(mpirun(2, &two).output().unwrap(), "resume on two ranks");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["steps_done"], 40, "{summary}");
    let steps: Vec<u64> = step_losses(&run).iter().map(|x| x.0).collect();
    assert_eq!(steps.last(), Some(&40), "{steps:?}");
}

/// Only `pretrain` shares its work between ranks; other commands refuse in one line.
#[test]
fn other_commands_refuse_to_run_as_several_processes() {
    let out = mpirun(2, &["tasks"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("only `pretext pretrain` runs across processes"),
        "{err}"
    );
}

/// The losses of a two-rank run equal those of one process stepping the same parts as
/// replicas (`ranks_share`, `one_share`: replicas per rank / in the one process).
fn ranks_match_one_process(task: &str, ranks_share: &str, one_share: &str, threads: &str) {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let data = format!("idx:{}", common::shared_data("fashion-mnist"));
    let common: Vec<&str> = vec![
        "pretrain",
        "--task",
        task,
        "--data",
        &data,
        "--set",
        "limit=512",
        "--set",
        "width=8",
        "--set",
        "batch_size=16",
        "--set",
        "steps=4",
        "--set",
        "warmup_steps=1",
        "--set",
        "log_every=1",
        "--set",
        "eval_every=0",
        "--set",
        "workers=1",
        "--set",
        "rank_check_every=1",
        "-q",
    ];
    let two = dir.path().join("two");
    let mut a = common.clone();
    a.extend_from_slice(&["--set", ranks_share, "--out", two.to_str().unwrap()]);
    let out = mpirun_threads(2, threads, &a).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    must(out, task);
    // the layout, once (rank 0), even with -q: each rank reads and decodes half the batch
    let replicas = ranks_share.trim_start_matches("replicas=");
    let layout = format!("layout: 2 ranks × {replicas} replica");
    assert_eq!(err.matches(&layout).count(), 1, "{err}");
    assert!(
        err.contains("global batch 16 (each rank reads and decodes its 8)"),
        "{err}"
    );
    let one = dir.path().join("one");
    let mut a = common.clone();
    a.extend_from_slice(&["--set", one_share, "--out", one.to_str().unwrap()]);
    let out = Command::new(bin())
        .args(&a)
        .env("RAYON_NUM_THREADS", "4")
        .output()
        .unwrap();
    must(out, "one process");
    let (l1, l2) = (step_losses(&one), step_losses(&two));
    assert_eq!(l1.len(), 4, "{l1:?}");
    for ((s, a), (_, b)) in l1.iter().zip(&l2) {
        assert!(((a - b) / a).abs() < 1e-3, "{task} step {s}: {a} vs {b}");
    }
}

/// A GAN makes two updates per step (discriminator, then generator): two all-reduces.
#[test]
fn two_ranks_train_a_gan_like_one_process() {
    ranks_match_one_process("superres", "replicas=1", "replicas=2", "1");
}

/// Threads inside ranks: 2 ranks × 2 replicas step the 4 parts of 1 process × 4 replicas.
#[test]
fn replicas_inside_ranks_compose() {
    ranks_match_one_process("rotation", "replicas=2", "replicas=4", "2");
}
