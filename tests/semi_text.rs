//! `--protocol semi` on labelled text (a slice of the SpamAssassin e-mails in ../shared/data),
//! end to end through the binary: the unlabelled pool is every training document and no
//! held-out one, the stage writes its record and teacher, and a stage killed while writing a
//! checkpoint continues bit for bit when the same command runs again.

mod common;

use std::path::{Path, PathBuf};

use common::{mail_slice, ok};

/// A 2-step masked-LM run of a tiny transformer on the slice (the encoder the stage starts from).
fn pretrain(data: &str, run: &Path) {
    ok(&[
        "pretrain",
        "--task",
        "masked-lm",
        "--data",
        data,
        "--out",
        run.to_str().unwrap(),
        "--set",
        "vocab=300",
        "--set",
        "d_model=32",
        "--set",
        "layers=1",
        "--set",
        "heads=2",
        "--set",
        "max_len=32",
        "--set",
        "batch_size=4",
        "--set",
        "steps=2",
        "--set",
        "warmup_steps=1",
        "--set",
        "val_fraction=0.2",
        "--quiet",
    ]);
}

fn semi_args(run: &Path, data: &str, out: &Path) -> Vec<String> {
    [
        "transfer",
        "--from",
        run.to_str().unwrap(),
        "--data",
        data,
        "--labels-per-class",
        "4",
        "--protocol",
        "semi",
        "--out",
        out.to_str().unwrap(),
        "--quiet",
        "--set",
        "finetune_steps=4",
        "--set",
        "finetune_batch_size=4",
        "--set",
        "semi_steps=6",
        "--set",
        "semi_batch_size=2",
        "--set",
        "semi_ratio=2",
        "--set",
        "semi_checkpoint_every=3",
        "--set",
        "semi_distill=1",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn stage(out: &Path) -> PathBuf {
    out.join("semi-4-mean-seed0")
}

/// The stage's finished student (safetensors, head included) and the teacher's cached pool
/// logits.
fn learned(out: &Path) -> (Vec<u8>, Vec<u8>) {
    let s = stage(out);
    (
        std::fs::read(s.join("student.safetensors")).unwrap(),
        std::fs::read(s.join("teacher-logits.safetensors")).unwrap(),
    )
}

#[test]
fn text_semi_learns_from_training_documents_only_and_resumes_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let data = format!("jsonl:{}", mail_slice(dir.path(), 30, 800).display());
    let run = dir.path().join("bert");
    pretrain(&data, &run);

    let whole = dir.path().join("whole");
    let args = semi_args(&run, &data, &whole);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&refs);
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(whole.join("semi-4-mean-seed0.json")).unwrap())
            .unwrap();
    let f1 = r["macro_f1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&f1), "{r}");
    let semi = &r["semi"];
    let (pool, n_test) = (
        semi["pool"].as_u64().unwrap(),
        r["n_test"].as_u64().unwrap(),
    );
    // The pretraining run held out the same documents, so nothing is left out of the test set;
    // the pool is every other document.
    assert_eq!(r["left_out_pretrained_on"], 0, "{r}");
    assert_eq!(pool + n_test, 60, "pool {pool} + held-out {n_test}: {r}");
    assert!(stage(&whole).join("semi.json").exists());
    assert!(stage(&whole).join("teacher.bpk").exists());

    // Killed while writing its second checkpoint, then the same command again.
    let cut = dir.path().join("cut");
    let args = semi_args(&run, &data, &cut);
    let killed = std::process::Command::new(env!("CARGO_BIN_EXE_pretext"))
        .args(&args)
        .env("PRETEXT_FAULT_KILL_IN_CHECKPOINT", "6")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "the fault hook kills the stage");
    let latest = std::fs::read_to_string(stage(&cut).join("checkpoints/latest")).unwrap();
    assert_eq!(
        latest.trim(),
        "step-00000003",
        "the first checkpoint survived"
    );
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    ok(&refs);
    assert!(
        learned(&whole) == learned(&cut),
        "the resumed stage differs from the uninterrupted one"
    );
}
