//! End-to-end: the real binary on real Fashion-MNIST from ../shared/data, on small slices.

mod common;

use common::{ok, pretext};

use std::path::{Path, PathBuf};
use std::process::Command;

fn fashion() -> String {
    format!(
        "idx:{}/../shared/data/fashion-mnist",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn accuracy(stdout: &str) -> f32 {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("accuracy: "))
        .unwrap_or_else(|| panic!("no accuracy line in:\n{stdout}"));
    line["accuracy: ".len()..].trim().parse().expect("a number")
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

const SMALL: &[&str] = &[
    "--set",
    "limit=512",
    "--set",
    "steps=12",
    "--set",
    "batch_size=16",
    "--set",
    "log_every=4",
    "--set",
    "checkpoint_every=6",
    "--set",
    "width=8",
    "--set",
    "warmup_steps=2",
];

fn pretrain(out: &Path) -> String {
    let data = fashion();
    let out_s = out.to_str().unwrap();
    let mut args = vec![
        "pretrain", "--task", "rotation", "--data", &data, "--out", out_s, "--quiet",
    ];
    args.extend_from_slice(SMALL);
    ok(&args)
}

#[test]
fn pretrain_then_transfer_writes_the_expected_files() {
    let dir = tmp();
    let run = dir.path().join("rot");
    let stdout = pretrain(&run);
    assert!(stdout.contains("finished 12 steps"), "{stdout}");
    for f in [
        "config.toml",
        "run.json",
        "metrics.jsonl",
        "encoder.safetensors",
        "summary.json",
        "checkpoints/latest",
    ] {
        assert!(run.join(f).exists(), "missing {f}");
    }
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    assert_eq!(latest, "step-00000012");
    for f in [
        "model.bpk",
        "optim-model.bpk",
        "encoder.safetensors",
        "state.json",
    ] {
        assert!(
            run.join("checkpoints/step-00000012").join(f).exists(),
            "missing checkpoint file {f}"
        );
    }
    // Metrics: the k-NN monitor on the untrained encoder (step 0), then one line per 4 steps
    // with loss and accuracy; the monitor again at the end (the data is labelled).
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = metrics
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let steps: Vec<u64> = rows.iter().map(|r| r["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, vec![0, 4, 8, 12]);
    assert!(
        rows[0]["loss"].is_null() && rows[0]["knn"].is_number(),
        "{}",
        rows[0]
    );
    assert!(
        rows[3]["loss"].is_number() && rows[3]["knn"].is_number(),
        "{}",
        rows[3]
    );
    // The resolved config records the overrides.
    let cfg = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(
        cfg.contains("steps = 12") && cfg.contains("batch_size = 16"),
        "{cfg}"
    );

    let run_s = run.to_str().unwrap();
    let mut common = vec![
        "--labels-per-class",
        "5",
        "--quiet",
        "--set",
        "test_limit=500",
    ];
    let out = ok(&[
        &["transfer", "--from", run_s, "--protocol", "linear"][..],
        &common,
    ]
    .concat());
    let acc = accuracy(&out);
    // 10 classes: anything a working probe learns is above chance; a broken one sits near 0.1.
    assert!(acc > 0.2 && acc <= 1.0, "linear accuracy {acc}");
    let json = run.join("transfer/linear-5-seed0.json");
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(v["n_train"], 50);
    assert_eq!(v["n_test"], 500);
    assert!((v["accuracy"].as_f64().unwrap() as f32 - acc).abs() < 1e-4);
    // A rotation run's linear probe reads the conv net's stage 3 of 4 by default, k-NN the last.
    assert_eq!(v["stage"], 3, "{v}");

    let knn = accuracy(&ok(&[
        &["transfer", "--from", run_s, "--protocol", "knn"][..],
        &common,
    ]
    .concat()));
    assert!(knn > 0.2, "knn accuracy {knn}");
    let stage_of = |f: &Path| -> serde_json::Value {
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(f).unwrap()).unwrap()["stage"]
            .clone()
    };
    assert_eq!(stage_of(&run.join("transfer/knn-5-seed0.json")), 4);

    let data = fashion();
    let base = dir.path().join("base");
    let base_s = base.to_str().unwrap();
    common.extend_from_slice(&[
        "--data",
        &data,
        "--out",
        base_s,
        "--set",
        "width=8",
        "--set",
        "finetune_steps=20",
    ]);
    let random = accuracy(&ok(&[
        &["transfer", "--from", "random", "--protocol", "linear"][..],
        &common,
    ]
    .concat()));
    assert!(random > 0.1, "random-encoder linear accuracy {random}");
    assert_eq!(stage_of(&base.join("linear-5-seed0.json")), 4);
    let scratch = accuracy(&ok(&[
        &["transfer", "--from", "scratch", "--protocol", "finetune"][..],
        &common,
    ]
    .concat()));
    assert!(scratch > 0.1, "scratch finetune accuracy {scratch}");
    assert!(base.join("finetune-5-seed0.json").exists());
    // Fine-tuning whose head starts from a linear probe (LP-FT), with no fine-tuning step to
    // speak of: it keeps what the probe learnt (a random head would sit near chance). One
    // full-rate step moves a width-8 net far, so the number depends on the draw: since every
    // image has its own augmentation generator, seeds 0–4 give 0.296, 0.458, 0.502, 0.466, 0.430
    // (before: 0.464, 0.506, 0.386, 0.438, 0.458).
    let lp = accuracy(&ok(&[
        &["transfer", "--from", "scratch", "--protocol", "finetune"][..],
        &common,
        &[
            "--set",
            "finetune_head=\"probe\"",
            "--set",
            "finetune_steps=1",
            "--set",
            "seed=1",
        ],
    ]
    .concat()));
    assert!(lp > 0.3, "probe-first finetune accuracy {lp}");
}

#[test]
fn tasks_lists_rotation() {
    let out = ok(&["tasks"]);
    let listed = |name: &str, word: &str| {
        out.lines()
            .any(|l| l.trim_start().starts_with(name) && l.contains(word))
    };
    assert!(listed("rotation", "90"), "{out}");
    assert!(listed("causal-lm", "next token"), "{out}");
    assert!(listed("masked-lm", "15%"), "{out}");
    assert!(listed("electra", "ELECTRA"), "{out}");
}

#[test]
fn compare_owns_the_time_budget() {
    fails(
        &[
            "compare",
            "--data",
            "jsonl:nowhere.jsonl",
            "--set",
            "max_minutes=3",
            "--out",
            "unused",
        ],
        2,
        "--minutes",
    );
    fails(
        &[
            "compare",
            "--data",
            "jsonl:nowhere.jsonl",
            "--minutes=-1",
            "--out",
            "unused",
        ],
        2,
        "--minutes",
    );
}

fn fails(args: &[&str], code: i32, needle: &str) {
    let out = pretext(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(code),
        "pretext {args:?}: stderr {stderr}"
    );
    assert!(
        stderr.contains(needle),
        "pretext {args:?}: expected '{needle}' in:\n{stderr}"
    );
    assert_eq!(
        stderr.lines().count(),
        1,
        "one-line error expected:\n{stderr}"
    );
}

#[test]
fn bad_command_lines_give_one_line_errors() {
    let dir = tmp();
    let out = dir.path().join("x");
    let out = out.to_str().unwrap();
    let data = fashion();
    fails(
        &[
            "pretrain", "--task", "rotation", "--data", &data, "--out", out, "--set", "stepz=3",
        ],
        2,
        "stepz",
    );
    fails(
        &[
            "pretrain",
            "--task",
            "rotation",
            "--data",
            &data,
            "--out",
            out,
            "--set",
            "batch_size=-1",
        ],
        2,
        "config",
    );
    fails(
        &[
            "pretrain", "--task", "nosuch", "--data", &data, "--out", out,
        ],
        2,
        "known tasks: rotation",
    );
    fails(
        &[
            "pretrain", "--task", "rotation", "--data", "tiff:/x", "--out", out,
        ],
        2,
        "tiff",
    );
    fails(
        &[
            "pretrain",
            "--task",
            "rotation",
            "--data",
            "idx:/no/such/dir",
            "--out",
            out,
        ],
        2,
        "/no/such/dir",
    );
    fails(
        &[
            "transfer",
            "--from",
            "random",
            "--data",
            &data,
            "--labels-per-class",
            "0",
        ],
        2,
        "labels-per-class",
    );
    fails(
        &[
            "transfer",
            "--from",
            "random",
            "--data",
            &data,
            "--labels-per-class",
            "7000",
        ],
        2,
        "only 6000",
    );
    fails(
        &["transfer", "--from", "/no/such/run", "--data", &data],
        2,
        "run.json",
    );
    fails(
        &[
            "pretrain", "--task", "rotation", "--data", &data, "--out", out, "--device", "tpu",
        ],
        2,
        "unknown device",
    );
}

#[test]
fn pretrain_refuses_to_overwrite_and_resumes() {
    let dir = tmp();
    let run: PathBuf = dir.path().join("r");
    let data = fashion();
    let run_s = run.to_str().unwrap();
    let mut args = vec![
        "pretrain",
        "--task",
        "rotation",
        "--data",
        &data,
        "--out",
        run_s,
        "--quiet",
        "--stop-after",
        "6",
    ];
    args.extend_from_slice(SMALL);
    let stdout = ok(&args);
    assert!(stdout.contains("stopped after 6 steps"), "{stdout}");
    assert!(
        !run.join("encoder.safetensors").exists(),
        "an unfinished run has no final encoder"
    );
    // Starting again into the same directory is refused with a hint to resume.
    args.truncate(9);
    fails(&args[..7], 2, "--resume");
    let stdout = ok(&["pretrain", "--resume", run_s, "--quiet"]);
    assert!(stdout.contains("finished 12 steps"), "{stdout}");
    assert!(run.join("encoder.safetensors").exists());
}

#[test]
fn demo_runs_end_to_end_on_the_builtin_data() {
    // A shortened demo (the real one is 1,000 steps); checks the whole path and the table.
    let dir = tmp();
    let out = dir.path().join("demo");
    let stdout = ok(&[
        "demo",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--set",
        "steps=10",
        "--set",
        "width=8",
        "--transfer-set",
        "finetune_steps=20",
        "--transfer-set",
        "semi_steps=6",
        "--transfer-set",
        "semi_batch_size=8",
        "--transfer-set",
        "semi_ratio=2",
    ]);
    assert!(
        stdout.contains("simclr-pretrained")
            && stdout.contains("random weights")
            && stdout.contains("scratch")
            && stdout.contains("fine-tune"),
        "{stdout}"
    );
    let rows: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("demo.json")).unwrap()).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    // Which protocols each encoder gets: random weights are not trained, scratch is only
    // trained (fine-tuning and the semi stage).
    let expect = [
        ["linear", "knn", "finetune", "semi"].as_slice(),
        &["linear", "knn"],
        &["finetune", "semi"],
    ];
    for (row, keys) in rows.iter().zip(expect) {
        for key in ["linear", "knn", "finetune", "semi"] {
            if keys.contains(&key) {
                let mean = row[key][0].as_f64().unwrap();
                assert!(mean > 0.2 && mean <= 1.0, "{key} {mean} in {row}");
            } else {
                assert!(row[key].is_null(), "{key} in {row}");
            }
        }
    }
    // Scratch fine-tuning had the 10 labels of each class (the baselines' width and backbone
    // are the pretrained network's: src/commands/demo.rs tests that).
    let scratch: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out.join("transfer/scratch/finetune-10-seed0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(scratch["n_train"], 100, "{scratch}");
    // Running it again replaces the earlier demo run instead of refusing.
    ok(&[
        "demo",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--set",
        "steps=2",
        "--set",
        "width=8",
        "--transfer-set",
        "finetune_steps=2",
        "--transfer-set",
        "semi_steps=2",
        "--transfer-set",
        "semi_batch_size=8",
        "--transfer-set",
        "semi_ratio=2",
    ]);
}

#[test]
fn ctrl_c_writes_a_checkpoint_and_the_run_resumes() {
    let dir = tmp();
    let run = dir.path().join("int");
    let data = fashion();
    let child = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args([
            "pretrain",
            "--task",
            "rotation",
            "--data",
            &data,
            "--out",
            run.to_str().unwrap(),
        ])
        .args([
            "--set",
            "limit=512",
            "--set",
            "steps=100000",
            "--set",
            "batch_size=16",
            "--set",
            "width=8",
        ])
        .args(["--set", "log_every=1", "--set", "checkpoint_every=100000"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training is under way (a metrics line is written), then send SIGINT.
    let metrics = run.join("metrics.jsonl");
    let t0 = std::time::Instant::now();
    while std::fs::read_to_string(&metrics).map_or(true, |s| s.lines().count() < 3) {
        assert!(t0.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("--resume"), "{stdout}");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            run.join("checkpoints")
                .join(std::fs::read_to_string(run.join("checkpoints/latest")).unwrap())
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let step = state["step"].as_u64().unwrap();
    assert!((3..100000).contains(&step), "checkpoint at step {step}");
    // Resume with a smaller budget just past the checkpoint: it continues from there.
    let stdout = ok(&[
        "pretrain",
        "--resume",
        run.to_str().unwrap(),
        "--stop-after",
        &(step + 2).to_string(),
        "--quiet",
    ]);
    assert!(
        stdout.contains(&format!("stopped after {} steps", step + 2)),
        "{stdout}"
    );
}

/// Started by mpirun as one of several processes, a build without the `mpi` feature refuses in
/// one line instead of training alone N times over.
#[cfg(not(feature = "mpi"))]
#[test]
fn launched_by_mpirun_without_the_mpi_feature_says_how_to_build_it() {
    let dir = tmp();
    let out = Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args([
            "pretrain",
            "--task",
            "rotation",
            "--data",
            &fashion(),
            "--out",
        ])
        .arg(dir.path().join("run"))
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .env("OMPI_COMM_WORLD_RANK", "1")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("rank 1 of 2") && err.contains("--features mpi"),
        "{err}"
    );
    assert!(!dir.path().join("run").exists(), "nothing written");
}
