//! Language models end to end through the binary, on slices of the real texts in
//! ../shared/data/text: pretraining (causal and masked), validation loss, resume, generation,
//! transfer to labelled documents, and clear errors for bad input.

mod common;

use common::{austen_slice, ok, pretext};

use std::io::Write;
use std::path::Path;

const SMALL: &[&str] = &[
    "--set",
    "vocab=400",
    "--set",
    "d_model=64",
    "--set",
    "layers=2",
    "--set",
    "heads=2",
    "--set",
    "seq_len=48",
    "--set",
    "batch_size=8",
    "--set",
    "warmup_steps=5",
    "--set",
    "lr=0.003",
    "--set",
    "eval_every=10",
    "--set",
    "eval_batches=4",
    "--set",
    "checkpoint_every=10",
    "--set",
    "val_fraction=0.1",
    "-q",
];

fn metrics(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn val_losses(run: &Path) -> Vec<f64> {
    metrics(run)
        .iter()
        .filter_map(|m| m.get("val_loss")?.as_f64())
        .collect()
}

#[test]
fn causal_lm_learns_resumes_exactly_and_generates_reproducibly() {
    let dir = tempfile::tempdir().unwrap();
    let txt = austen_slice(dir.path(), 150_000);
    let spec = format!("text:{}", txt.display());
    let straight = dir.path().join("straight");
    let mut args = vec![
        "pretrain",
        "--task",
        "causal-lm",
        "--data",
        &spec,
        "--set",
        "steps=40",
        // Dropout (0.1) in two replicas at once: each draws its own masks, repeatably.
        "--set",
        "replicas=2",
    ];
    args.extend_from_slice(SMALL);
    let out_flag = straight.to_str().unwrap();
    let mut a = args.clone();
    a.extend_from_slice(&["--out", out_flag]);
    let stdout = ok(&a);
    assert!(stdout.contains("validation loss"), "{stdout}");
    for f in [
        "config.toml",
        "run.json",
        "tokenizer.json",
        "tokens/train.tokens",
        "encoder.safetensors",
        "summary.json",
        "sample.txt",
    ] {
        assert!(straight.join(f).exists(), "{f} missing");
    }
    // Validation loss falls from about ln(400) = 6.0 (the untrained model, step 0) as it learns.
    let v = val_losses(&straight);
    assert_eq!(v.len(), 5, "{v:?}");
    assert!(v.iter().all(|x| x.is_finite()));
    assert!((v[0] - 400f64.ln()).abs() < 0.5, "untrained loss {v:?}");
    assert!(v[4] < v[0] - 0.5, "validation loss did not fall: {v:?}");

    // Stopped at step 20 and resumed: the same metrics and weights, bit for bit.
    resumed_equals_straight(&args, &straight, &dir.path().join("resumed"), 20);

    // Generation: same seed, same text; another seed, another text.
    let run = straight.to_str().unwrap();
    let gen = |seed: &str| {
        ok(&[
            "generate",
            "--from",
            run,
            "--prompt",
            "It is a truth",
            "--tokens",
            "30",
            "--seed",
            seed,
        ])
    };
    let a = gen("1");
    assert!(a.starts_with("It is a truth"), "{a}");
    assert!(a.len() > "It is a truth".len() + 10, "{a}");
    assert_eq!(a, gen("1"));
    assert_ne!(a, gen("2"));

    // The key/value cache changes the speed only: the same text as recomputing the context for
    // every token (`--no-cache`), greedy and sampled, over 200 tokens, past the 128 positions of
    // the window (which restarts on its last 64 tokens).
    for sampling in [
        &["--temperature", "0"][..],
        &["--temperature", "0.9", "--top-k", "10", "--seed", "3"],
    ] {
        let mut args = vec![
            "generate",
            "--from",
            run,
            "--prompt",
            "It is a truth",
            "--tokens",
            "200",
        ];
        args.extend_from_slice(sampling);
        let cached = ok(&args);
        args.push("--no-cache");
        assert_eq!(cached, ok(&args), "{sampling:?}");
    }
}

#[test]
fn masked_lm_pretrains_and_its_features_transfer() {
    let dir = tempfile::tempdir().unwrap();
    let txt = austen_slice(dir.path(), 60_000);
    let spec = format!("text:{}", txt.display());
    let run = dir.path().join("bert");
    let mut a = vec![
        "pretrain",
        "--task",
        "masked-lm",
        "--data",
        &spec,
        "--set",
        "steps=20",
        "--out",
        run.to_str().unwrap(),
    ];
    a.extend_from_slice(SMALL);
    ok(&a);
    let v = val_losses(&run);
    assert!(v.len() >= 2 && v.iter().all(|x| x.is_finite()), "{v:?}");
    // The masked model cannot continue a text.
    let out = pretext(&[
        "generate",
        "--from",
        run.to_str().unwrap(),
        "--prompt",
        "Emma",
        "--tokens",
        "5",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("causal-lm"));

    // A labelled JSON-lines file where the class shows in the words: letters vs digits.
    let jsonl = dir.path().join("docs.jsonl");
    let mut f = std::fs::File::create(&jsonl).unwrap();
    for i in 0..200 {
        let (text, label) = if i % 2 == 0 {
            (format!("the lady walked to the house {i} times"), "prose")
        } else {
            (
                format!("{} {} {} {}", i * 7919, i * 104729, i * 31, i),
                "digits",
            )
        };
        writeln!(f, "{}", serde_json::json!({"body": text, "kind": label})).unwrap();
    }
    drop(f);
    let data = format!("jsonl:{}", jsonl.display());
    for protocol in ["linear", "knn", "finetune"] {
        let stdout = ok(&[
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
            "text_field=body",
            "--set",
            "label_field=kind",
            "--set",
            "finetune_steps=30",
            "--out",
            dir.path().join("t").to_str().unwrap(),
            "-q",
        ]);
        assert!(stdout.contains("macro-F1"), "{stdout}");
    }
    let result: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("t/linear-8-mean-seed0.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(result["n_train"], 16);
    let acc = result["accuracy"].as_f64().unwrap();
    assert!(acc > 0.9, "letters vs digits is easy: {acc}");
    // The scratch baseline with the run's architecture and tokenizer.
    let like = format!("like={}", run.display());
    ok(&[
        "transfer",
        "--from",
        "scratch",
        "--data",
        &data,
        "--labels-per-class",
        "8",
        "--protocol",
        "finetune",
        "--set",
        "text_field=body",
        "--set",
        "label_field=kind",
        "--set",
        &like,
        "--set",
        "finetune_steps=20",
        "--out",
        dir.path().join("s").to_str().unwrap(),
        "-q",
    ]);
    // That run never saw these documents, so nothing is left out of the evaluation.
    assert_eq!(result["left_out_pretrained_on"], 0, "{result}");

    // A run pretrained on the labelled file itself with val_fraction 0.1 trained on part of
    // transfer's held-out 20%: those documents are left out of the evaluation and counted.
    let on_docs = dir.path().join("on-docs");
    let mut a = vec![
        "pretrain",
        "--task",
        "masked-lm",
        "--data",
        &data,
        "--set",
        "text_field=body",
        "--set",
        "steps=2",
        "--out",
        on_docs.to_str().unwrap(),
    ];
    a.extend_from_slice(SMALL);
    ok(&a);
    let out = pretext(&[
        "transfer",
        "--from",
        on_docs.to_str().unwrap(),
        "--labels-per-class",
        "8",
        "--protocol",
        "knn",
        "--set",
        "text_field=body",
        "--set",
        "label_field=kind",
        "--out",
        dir.path().join("o").to_str().unwrap(),
        "-q",
    ]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("were pretraining text"),
        "{out:?}"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("o/knn-8-mean-seed0.json")).unwrap())
            .unwrap();
    use pretext::data::corpus::is_validation;
    let test: Vec<u64> = (0..200).filter(|&i| is_validation(0, i, 0.2)).collect();
    let trained = test.iter().filter(|&&i| !is_validation(0, i, 0.1)).count();
    assert!(trained > 0, "the hash splits are nested");
    assert_eq!(r["left_out_pretrained_on"], trained, "{r}");
    assert_eq!(r["n_test"], test.len() - trained, "{r}");
    assert!(
        r["tokenizer_trained_on"]
            .as_str()
            .unwrap()
            .contains("the training documents of"),
        "{r}"
    );
}

#[test]
fn bad_text_input_gets_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    // A JSON line without the label field: the file, the line and the field are named.
    let jsonl = dir.path().join("mail.jsonl");
    std::fs::write(
        &jsonl,
        "{\"text\": \"hello\", \"label\": \"ham\"}\n{\"text\": \"buy now\"}\n",
    )
    .unwrap();
    let out = pretext(&[
        "transfer",
        "--from",
        "random",
        "--data",
        &format!("jsonl:{}", jsonl.display()),
        "--labels-per-class",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("mail.jsonl") && err.contains("line 2") && err.contains("label"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");

    // Invalid UTF-8: the byte offset is named.
    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, b"good text here\nthen \xff\xfe broken\n").unwrap();
    let out = pretext(&[
        "pretrain",
        "--task",
        "causal-lm",
        "--data",
        &format!("text:{}", bad.display()),
        "--out",
        dir.path().join("r1").to_str().unwrap(),
        "-q",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("bad.txt") && err.contains("byte 20"), "{err}");

    // An empty corpus.
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "\n\n").unwrap();
    let out = pretext(&[
        "pretrain",
        "--task",
        "causal-lm",
        "--data",
        &format!("text:{}", empty.display()),
        "--out",
        dir.path().join("r2").to_str().unwrap(),
        "-q",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("empty.txt"), "{err}");

    // A bad model setting names the key and exits 2.
    let txt = austen_slice(dir.path(), 20_000);
    let out = pretext(&[
        "pretrain",
        "--task",
        "causal-lm",
        "--data",
        &format!("text:{}", txt.display()),
        "--set",
        "heads=5",
        "--set",
        "tokenizer=bytes",
        "--out",
        dir.path().join("r3").to_str().unwrap(),
        "-q",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("heads"), "{err}");
}

/// A run whose language model diverges under `on_nonfinite = "skip"`: the skipped steps still
/// checkpoint on schedule, the run gives up after 10 in a row naming the kept step, and the
/// checkpoint holds the model and its optimiser under the engine's names.
#[test]
fn skipped_text_steps_still_checkpoint_on_schedule() {
    let dir = tempfile::tempdir().unwrap();
    let text = austen_slice(dir.path(), 60_000);
    let run = dir.path().join("diverge");
    let data = format!("text:{}", text.display());
    let mut a = vec![
        "pretrain",
        "--task",
        "causal-lm",
        "--data",
        &data,
        "--tokenizer",
        "bytes",
        "--out",
        run.to_str().unwrap(),
        "--set",
        "steps=40",
        "--set",
        "on_nonfinite=\"skip\"",
        "--set",
        "grad_clip=0",
        "--set",
        "dropout=0",
    ];
    a.extend_from_slice(SMALL);
    // After SMALL, so these win: a learning rate that overflows the weights, checkpoints every 4.
    a.extend_from_slice(&[
        "--set",
        "lr=1e36",
        "--set",
        "warmup_steps=0",
        "--set",
        "checkpoint_every=4",
    ]);
    let out = pretext(&a);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("10 steps in a row"), "{err}");
    let kept: u64 = err
        .split("the weights are those of step ")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("names the kept step: {err}"));
    let last = kept + 10;
    let latest = std::fs::read_to_string(run.join("checkpoints/latest")).unwrap();
    assert_eq!(latest, format!("step-{:08}", last / 4 * 4), "{err}");
    let ckpt = run.join("checkpoints").join(latest);
    for f in [
        "model.bpk",
        "optim-model.bpk",
        "encoder.safetensors",
        "state.json",
    ] {
        assert!(ckpt.join(f).exists(), "{f} missing");
    }
    let skipped = metrics(&run)
        .iter()
        .filter(|m| m.get("skipped").is_some())
        .count();
    assert_eq!(skipped, 10);
}

/// ELECTRA end to end: the discriminator learns to tell replaced tokens, a run stopped and
/// resumed is bitwise the uninterrupted one (with two replicas and dropout), the run records a
/// bidirectional transformer, and its discriminator transfers like a masked-LM's.
#[test]
fn electra_learns_resumes_exactly_and_transfers() {
    let dir = tempfile::tempdir().unwrap();
    let txt = austen_slice(dir.path(), 60_000);
    let spec = format!("text:{}", txt.display());
    let straight = dir.path().join("straight");
    let mut args = vec![
        "pretrain",
        "--task",
        "electra",
        "--data",
        &spec,
        "--set",
        "steps=30",
        "--set",
        "replicas=2",
    ];
    args.extend_from_slice(SMALL);
    let mut a = args.clone();
    a.extend_from_slice(&["--out", straight.to_str().unwrap()]);
    let stdout = ok(&a);
    assert!(stdout.contains("val_disc_loss"), "{stdout}");
    let run_json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(straight.join("run.json")).unwrap()).unwrap();
    assert!(
        run_json.to_string().contains("\"causal\":false"),
        "{run_json}"
    );
    // The discriminator's loss falls from chance (ln 2 per token, before the generator learns).
    let disc: Vec<f64> = metrics(&straight)
        .iter()
        .filter_map(|m| m.get("val_disc_loss")?.as_f64())
        .collect();
    assert_eq!(disc.len(), 4, "{disc:?}");
    assert!(disc.iter().all(|x| x.is_finite()));
    assert!(
        disc[3] < disc[0] - 0.1,
        "discriminator loss did not fall: {disc:?}"
    );
    let steps = metrics(&straight);
    let last = steps
        .iter()
        .rev()
        .find(|m| m.get("disc_acc").is_some())
        .unwrap();
    assert!(last["replaced"].as_f64().unwrap() > 0.0, "{last}");

    // Stopped at step 10 and resumed: the same metrics and weights, bit for bit.
    resumed_equals_straight(&args, &straight, &dir.path().join("resumed"), 10);

    // The discriminator transfers (linear probe on letters vs digits).
    let jsonl = dir.path().join("docs.jsonl");
    let mut f = std::fs::File::create(&jsonl).unwrap();
    for i in 0..120 {
        let (text, label) = if i % 2 == 0 {
            (format!("the lady walked to the house {i} times"), "prose")
        } else {
            (
                format!("{} {} {} {}", i * 7919, i * 104729, i * 31, i),
                "digits",
            )
        };
        writeln!(f, "{}", serde_json::json!({"body": text, "kind": label})).unwrap();
    }
    drop(f);
    let data = format!("jsonl:{}", jsonl.display());
    let stdout = ok(&[
        "transfer",
        "--from",
        straight.to_str().unwrap(),
        "--data",
        &data,
        "--labels-per-class",
        "8",
        "--protocol",
        "linear",
        "--set",
        "text_field=body",
        "--set",
        "label_field=kind",
        "--out",
        dir.path().join("t").to_str().unwrap(),
        "-q",
    ]);
    assert!(stdout.contains("macro-F1"), "{stdout}");
}

/// A time budget stops a run before its step count, with a checkpoint and its transferable
/// weights, says so in summary.json and on stdout, and `--resume` continues it.
#[test]
fn a_text_run_stops_when_its_time_runs_out_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let txt = austen_slice(dir.path(), 40_000);
    let spec = format!("text:{}", txt.display());
    let run = dir.path().join("timed");
    let mut a = vec![
        "pretrain",
        "--task",
        "masked-lm",
        "--data",
        &spec,
        "--set",
        "steps=100000",
        "--set",
        "max_minutes=0.005",
        "--out",
        run.to_str().unwrap(),
    ];
    a.extend_from_slice(SMALL);
    let stdout = ok(&a);
    assert!(stdout.contains("minutes ran out"), "{stdout}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert_eq!(summary["out_of_time"], true, "{summary}");
    assert_eq!(summary["completed"], false, "{summary}");
    let done = summary["steps_done"].as_u64().unwrap();
    assert!((1..100000).contains(&done), "{summary}");
    assert!(run.join("encoder.safetensors").exists());
    let checkpoints = std::fs::read_dir(run.join("checkpoints")).unwrap().count();
    assert!(checkpoints >= 1);
    // Resumed: it goes on from that step (and stops for time again).
    ok(&["pretrain", "--resume", run.to_str().unwrap(), "-q"]);
    let again: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("summary.json")).unwrap()).unwrap();
    assert!(again["steps_done"].as_u64().unwrap() > done, "{again}");
}

/// `args` (a pretrain command without `--out`) stopped after `stop` steps into `resumed` and
/// continued with `--resume`: the same metrics (bar timings) and encoder as `straight`, bit for bit.
fn resumed_equals_straight(args: &[&str], straight: &Path, resumed: &Path, stop: u64) {
    let stop = stop.to_string();
    let mut a = args.to_vec();
    a.extend_from_slice(&["--out", resumed.to_str().unwrap(), "--stop-after", &stop]);
    ok(&a);
    assert!(!resumed.join("encoder.safetensors").exists());
    ok(&["pretrain", "--resume", resumed.to_str().unwrap(), "-q"]);
    let strip = |run: &Path| -> Vec<String> {
        metrics(run)
            .into_iter()
            .map(|mut m| {
                let o = m.as_object_mut().unwrap();
                o.remove("tokens_per_s");
                o.remove("elapsed_s");
                serde_json::to_string(o).unwrap()
            })
            .collect()
    };
    assert_eq!(strip(straight), strip(resumed));
    assert_eq!(
        std::fs::read(straight.join("encoder.safetensors")).unwrap(),
        std::fs::read(resumed.join("encoder.safetensors")).unwrap()
    );
}

/// The tokenizer a run trains sees the run's training documents only: a word repeated in every
/// held-out document (the run's validation split, which at the same seed and fraction is a text
/// transfer's test split: one rule, `is_validation`) never becomes a token, while another word
/// repeated as often in training documents does.
#[test]
fn no_held_out_document_reaches_the_tokenizer() {
    use pretext::data::corpus::is_validation;
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(austen_slice(dir.path(), 80_000)).unwrap();
    let words: Vec<&str> = text.split_whitespace().collect();
    let (seed, fraction) = (0, 0.2);
    let jsonl = dir.path().join("docs.jsonl");
    let mut f = std::fs::File::create(&jsonl).unwrap();
    let (mut held_out, mut training) = (0, 0);
    for (i, chunk) in words.chunks(40).enumerate() {
        let mut doc = chunk.join(" ");
        // The same letters in two orders: no pair of them is frequent in English.
        if is_validation(seed, i as u64, fraction) {
            held_out += 1;
            doc += &" vzqxjwk".repeat(12);
        } else if training < held_out {
            training += 1;
            doc += &" kjwxqzv".repeat(12);
        }
        writeln!(f, "{}", serde_json::json!({ "text": doc })).unwrap();
    }
    drop(f);
    assert!(
        held_out >= 50 && training == held_out,
        "{held_out} {training}"
    );
    let run = dir.path().join("run");
    let data = format!("jsonl:{}", jsonl.display());
    let mut a = vec![
        "pretrain",
        "--task",
        "causal-lm",
        "--data",
        &data,
        "--out",
        run.to_str().unwrap(),
        "--set",
        "steps=1",
    ];
    a.extend_from_slice(SMALL);
    a.extend_from_slice(&["--set", "val_fraction=0.2", "--set", "seed=0"]);
    ok(&a);
    let tok = pretext::data::tokenizer::Tokenizer::load(&run.join("tokenizer.json")).unwrap();
    let seen = tok.encode(" kjwxqzv").len();
    let unseen = tok.encode(" vzqxjwk").len();
    assert!(seen <= 2, "the training documents' word is {seen} tokens");
    assert!(
        unseen >= 6,
        "the held-out documents' word is {unseen} tokens"
    );
}
