//! Text corpora, tokenizers and token files on the real data in ../shared/data/text.

use std::collections::HashMap;
use std::process::Command;
use std::time::Instant;

use pretext::data::corpus::{Fields, TextSource};
use pretext::data::tokenizer::{StreamDecoder, Tokenizer};

fn data(name: &str) -> String {
    format!("{}/../shared/data/text/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn austen() -> TextSource {
    TextSource::open(
        &format!("text:{}", data("austen.txt.gz")),
        &Fields::default(),
    )
    .unwrap()
}

#[test]
fn austen_paragraphs() {
    let src = austen();
    let mut n = 0u64;
    let mut chars = 0usize;
    let mut first = None;
    for doc in src.docs() {
        let doc = doc.unwrap();
        assert_eq!(doc.index, n);
        if first.is_none() {
            first = Some(doc.clone());
        }
        chars += doc.text.chars().count();
        n += 1;
    }
    let first = first.unwrap();
    assert_eq!(first.text, "# Sense and Sensibility\nSENSE AND SENSIBILITY");
    assert_eq!(first.line, 1);
    assert!(n > 10_000, "{n} paragraphs");
    // 4,025,130 characters in the file, less the line ends and blank lines not kept.
    assert!((3_800_000..4_025_130).contains(&chars), "{chars}");
    println!("austen: {n} paragraphs, {chars} characters");
}

#[test]
fn spamassassin_labels() {
    let fields = Fields {
        text: "text".into(),
        label: Some("label".into()),
    };
    let src =
        TextSource::open(&format!("jsonl:{}", data("spamassassin.jsonl.gz")), &fields).unwrap();
    assert!(src.is_labelled());
    let mut counts: HashMap<String, usize> = HashMap::new();
    let mut n = 0;
    for doc in src.docs() {
        let doc = doc.unwrap();
        assert_eq!(doc.line, n as u64 + 1);
        *counts.entry(doc.label.unwrap()).or_default() += 1;
        n += 1;
    }
    assert_eq!(n, 6046);
    assert_eq!(counts["ham"], 4150);
    assert_eq!(counts["spam"], 1896);
    // A field that is not there names the fields that are.
    let fields = Fields {
        text: "body".into(),
        label: None,
    };
    let src =
        TextSource::open(&format!("jsonl:{}", data("spamassassin.jsonl.gz")), &fields).unwrap();
    let e = src.docs().next().unwrap().unwrap_err().to_string();
    assert!(
        e.contains("line 1") && e.contains("`body`") && e.contains("`label`"),
        "{e}"
    );
}

#[test]
fn austen_bpe_round_trips_and_compresses() {
    let src = austen();
    let start = Instant::now();
    let tok = Tokenizer::train(&src, 2048, 2, false).unwrap();
    println!("trained in {:.1}s", start.elapsed().as_secs_f64());
    assert_eq!(tok.kind(), "bpe");
    assert_eq!(tok.vocab_size(), 2048);
    // The first 200 KB of the novels, as one text.
    let mut text = String::new();
    for doc in src.docs() {
        text.push_str(&doc.unwrap().text);
        text.push_str("\n\n");
        if text.len() >= 200_000 {
            break;
        }
    }
    let ids = tok.encode(&text);
    assert_eq!(tok.decode(&ids), text);
    let mut dec = StreamDecoder::new(&tok);
    let mut streamed: String = ids.iter().map(|&i| dec.push(i)).collect();
    streamed.push_str(&dec.finish());
    assert_eq!(streamed, text);
    let cpt = text.chars().count() as f64 / ids.len() as f64;
    println!("austen, vocab 2048: {cpt:.3} chars/token");
    assert!(cpt > 2.5, "{cpt}");
}

#[test]
fn tokenizer_train_command() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("small.txt");
    let para = "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in want of a wife.\n\n";
    std::fs::write(&corpus, para.repeat(200)).unwrap();
    let out = dir.path().join("tok.json");
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_pretext"))
            .args(args)
            .output()
            .unwrap()
    };
    let spec = format!("text:{}", corpus.display());
    let o = run(&[
        "tokenizer",
        "train",
        "--data",
        &spec,
        "--vocab",
        "300",
        "--out",
        out.to_str().unwrap(),
        "-q",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    for want in [
        "kind: bpe",
        "vocab size: 300",
        "documents: 200",
        "characters: 23",
        "tokens: ",
        "chars/token: ",
        "seconds: ",
    ] {
        assert!(stdout.contains(want), "{want}:\n{stdout}");
    }
    let tok = Tokenizer::load(&out).unwrap();
    assert_eq!(tok.vocab_size(), 300);
    let o = run(&[
        "tokenizer",
        "encode",
        "--tokenizer",
        out.to_str().unwrap(),
        "a single man",
    ]);
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && stdout.contains("12 chars (bpe tokenizer, vocab 300)"),
        "{stdout}"
    );
    let pieces: String = stdout
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(_, p)| p.trim_matches('"').to_string())
        .collect();
    assert_eq!(pieces, "a single man");
    // Errors: one line, non-zero.
    let o = run(&[
        "tokenizer",
        "train",
        "--data",
        "text:/no/such.txt",
        "--out",
        "x.json",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("/no/such.txt") && stderr.lines().count() == 1,
        "{stderr}"
    );
    let o = run(&[
        "tokenizer",
        "train",
        "--data",
        &spec,
        "--vocab",
        "100",
        "--out",
        "x.json",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let o = run(&[
        "tokenizer",
        "encode",
        "--tokenizer",
        corpus.to_str().unwrap(),
        "x",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("small.txt") && stderr.contains("not a usable tokenizer"),
        "{stderr}"
    );
}
