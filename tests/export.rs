//! `pretext embed`, `similar` and `export` end to end through the binary, on real data from
//! ../shared/data: the ONNX export run by onnxruntime and the PyTorch export run by the shipped
//! module (or, without torch, by a NumPy reference forward over the exported state dict) give
//! `pretext embed`'s vectors within 1e-4, for image runs and for text runs (masked-lm and
//! causal-lm transformers on tokenized e-mails and novels, padded batches); `--out FILE.parquet`
//! holds the .npy's rows (read back by pyarrow/pandas); a broken file with and without
//! `--skip-bad`; the query image comes back first; bad inputs give one clear line and exit
//! code 2.

mod common;

use common::{ok, pretext, py_script, shared_data};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use onnx_protobuf::tensor_shape_proto::dimension;
use onnx_protobuf::{type_proto, Message, ModelProto};
use pretext::commands::embed::npy;
use pretext::data::{OpenOptions, Stream};

/// Runs made once for the whole file (tests run in parallel and share them).
struct Runs {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// convnet, rotation on the photos folder (colour, 32×32).
    conv: PathBuf,
    /// resnet18, rotation on Fashion-MNIST (grayscale, 28×28).
    res: PathBuf,
    /// convnet, jigsaw on Fashion-MNIST: its encoder is fed per-image standardised images.
    jig: PathBuf,
    /// A 64-image idx slice of Fashion-MNIST's training images.
    fashion64: String,
}

fn photos() -> String {
    format!("folder:{}", shared_data("photos"))
}

fn runs() -> &'static Runs {
    static RUNS: OnceLock<Runs> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let conv = root.join("conv");
        let res = root.join("res");
        let common = [
            "--set",
            "width=8",
            "--set",
            "steps=4",
            "--set",
            "warmup_steps=1",
            "--set",
            "log_every=2",
            "--set",
            "checkpoint_every=4",
            "--quiet",
        ];
        let photos = photos();
        let mut a = vec!["pretrain", "--task", "rotation", "--data", &photos, "--out"];
        let conv_s = conv.to_str().unwrap().to_string();
        a.push(&conv_s);
        a.extend_from_slice(&["--set", "image_size=32", "--set", "batch_size=8"]);
        a.extend_from_slice(&common);
        ok(&a);
        let res_s = res.to_str().unwrap().to_string();
        let fashion = format!("idx:{}", shared_data("fashion-mnist"));
        let mut a = vec![
            "pretrain", "--task", "rotation", "--data", &fashion, "--out",
        ];
        a.push(&res_s);
        a.extend_from_slice(&[
            "--set",
            "backbone=\"resnet18\"",
            "--set",
            "batch_size=8",
            "--set",
            "limit=256",
        ]);
        a.extend_from_slice(&common);
        ok(&a);
        let jig = root.join("jig");
        let jig_s = jig.to_str().unwrap().to_string();
        let mut a = vec!["pretrain", "--task", "jigsaw", "--data", &fashion, "--out"];
        a.push(&jig_s);
        a.extend_from_slice(&["--set", "batch_size=8", "--set", "limit=256"]);
        a.extend_from_slice(&common);
        ok(&a);
        let fashion64 = idx_slice(&fashion, 64, &root.join("fashion64"));
        Runs {
            fashion64,
            _dir: dir,
            root,
            conv,
            res,
            jig,
        }
    })
}

/// The first `n` training images (28×28) and labels of `source`, written in the idx format into
/// `dir`; returns the data spec `idx:DIR`.
fn idx_slice(source: &str, n: usize, dir: &Path) -> String {
    let ds = pretext::data::open(
        source,
        &OpenOptions {
            limit: Some(n),
            ..Default::default()
        },
    )
    .unwrap();
    std::fs::create_dir_all(dir).unwrap();
    pretext::data::idx::write_idx_images(
        dir.join("train-images-idx3-ubyte"),
        n,
        28,
        28,
        &ds.train.images,
    )
    .unwrap();
    let labels: Vec<u8> = ds.train.labels.unwrap().iter().map(|&l| l as u8).collect();
    pretext::data::idx::write_idx_labels(dir.join("train-labels-idx1-ubyte"), &labels).unwrap();
    format!("idx:{}", dir.display())
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Exit code and stderr of a command that must fail.
fn fails(args: &[&str]) -> (i32, String) {
    let out = pretext(args);
    assert!(!out.status.success(), "pretext {args:?} succeeded");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).trim().to_string(),
    )
}

/// The CSV's rows after the header.
fn csv_rows(npy_path: &Path) -> Vec<String> {
    std::fs::read_to_string(npy_path.with_extension("csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(str::to_string)
        .collect()
}

/// The pixels `pretext embed` feeds the encoder, before normalisation: pixel / 255 as float32
/// [n, C·H·W], in row order.
fn write_pixels(spec: &str, size: usize, out: &Path) {
    let ds = pretext::data::open(
        spec,
        &OpenOptions {
            image_size: Some(size),
            stream: Stream::Always,
            ..Default::default()
        },
    )
    .unwrap();
    let set = &ds.train;
    let mut w = npy::NpyWriter::create(out, set.image_len()).unwrap();
    for i in 0..set.n {
        let px: Vec<f32> = set
            .image(i)
            .unwrap()
            .iter()
            .map(|&v| v as f32 / 255.0)
            .collect();
        w.push(&px).unwrap();
    }
    w.finish().unwrap();
}

/// `python3` with NumPy, or why not (under `CI=true`, a failure: [`common::missing_tool`]).
fn python_with_numpy(what: &str) -> bool {
    let why = match Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
    {
        Ok(o) if o.status.success() => return true,
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => format!("python3: {e}"),
    };
    common::missing_tool(what, &format!("python3 with numpy: {why}"));
    false
}

/// The ONNX file is a standard model: opset 17, a symbolic batch, the run's metadata.
fn check_onnx_structure(path: &Path, task: &str, steps: u64) {
    let model = ModelProto::parse_from_bytes(&std::fs::read(path).unwrap()).unwrap();
    assert_eq!(model.opset_import[0].version, 17);
    assert!(model.opset_import[0].domain.is_empty());
    let graph = model.graph.as_ref().unwrap();
    let Some(type_proto::Value::TensorType(t)) = &graph.input[0].type_.value else {
        panic!("input is not a tensor");
    };
    assert_eq!(
        t.shape.dim[0].value,
        Some(dimension::Value::DimParam("batch".into()))
    );
    let meta: serde_json::Value = serde_json::from_str(
        &model
            .metadata_props
            .iter()
            .find(|p| p.key == "pretext")
            .unwrap()
            .value,
    )
    .unwrap();
    assert_eq!(meta["task"], task);
    assert_eq!(meta["steps"], steps);
    assert_eq!(meta["preprocessing"]["normalization_included"], true);
}

#[test]
fn onnx_and_torch_exports_give_the_vectors_of_embed() {
    let r = runs();
    for (name, task, run, data, size) in [
        ("convnet", "rotation", &r.conv, photos(), 32),
        ("resnet18", "rotation", &r.res, r.fashion64.clone(), 28),
        ("convnet", "jigsaw", &r.jig, r.fashion64.clone(), 28),
    ] {
        let dir = r.root.join(format!("check-{name}-{task}"));
        std::fs::create_dir_all(&dir).unwrap();
        let emb = dir.join("emb.npy");
        let stdout = ok(&[
            "embed",
            "--from",
            s(run),
            "--data",
            &data,
            "--out",
            s(&emb),
            "-q",
        ]);
        assert!(stdout.contains("images/s"), "{stdout}");
        let (vectors, rows, dim) = npy::read(&emb).unwrap();
        assert_eq!(dim, 64, "{name}: width 8 × 8");
        assert_eq!(csv_rows(&emb).len(), rows);
        assert!(vectors.iter().all(|v| v.is_finite()));

        let onnx = dir.join("encoder.onnx");
        let torch = dir.join("torch-export");
        let stdout = ok(&[
            "export",
            "--from",
            s(run),
            "--format",
            "onnx",
            "--out",
            s(&onnx),
        ]);
        assert!(stdout.contains(name), "{stdout}");
        ok(&[
            "export",
            "--from",
            s(run),
            "--format",
            "torch",
            "--out",
            s(&torch),
        ]);
        check_onnx_structure(&onnx, task, 4);
        for f in ["model.safetensors", "config.json", "pretext_encoder.py"] {
            assert!(torch.join(f).exists(), "{name}: {f}");
        }
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(torch.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["architecture"]["name"], name);
        assert_eq!(
            config["preprocessing"]["per_image"],
            task == "jigsaw",
            "{task}: tiles standardised one by one"
        );
        assert!(!config["data"].as_str().unwrap().is_empty());
        assert!(
            config["architecture"].get("patch").is_none(),
            "{name}: no ViT keys in a conv net's config: {config}"
        );
        check_with_python(name, &dir, &onnx, &torch, &data, size, &emb);
    }
}

/// Runs tests/py/check_image_exports.py on the exports (`onnx`, the `torch` directory) against `pretext embed`'s
/// vectors `emb` of `data` (images of side `size`); skipped with the reason without python3 and
/// NumPy.
fn check_with_python(
    name: &str,
    dir: &Path,
    onnx: &Path,
    torch: &Path,
    data: &str,
    size: usize,
    emb: &Path,
) {
    if !python_with_numpy(&format!("the Python checks ({name})")) {
        return;
    }
    let pixels = dir.join("pixels.npy");
    write_pixels(data, size, &pixels);
    let out = Command::new("python3")
        .args([
            &py_script("check_image_exports.py"),
            s(onnx),
            s(torch),
            s(&pixels),
            s(emb),
        ])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("{name}:\n{report}");
    assert!(
        out.status.success(),
        "{name}: the exports differ from embed\n{report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(report.contains("numpy reference") && report.contains("onnx"));
}

/// ViT runs (rotation, 2 steps on the built-in Fashion-MNIST slice) export to ONNX and PyTorch
/// and give `embed`'s vectors on 24 of its 28×28 images: the preset's 4-px patches (a 7×7 grid,
/// width 32, one head) and 8-px patches (28 zero-padded to 32, a 4×4 grid, width 64, two heads).
#[test]
fn vit_exports_give_the_vectors_of_embed() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let data = idx_slice("builtin:fashion-mnist-demo", 24, &root.join("fashion24"));
    for (patch, width, heads) in [(0, 32, 1), (8, 64, 2)] {
        let name = format!("vit-p{patch}");
        let run = root.join(&name);
        let (width_set, patch_set) = (format!("width={width}"), format!("patch_size={patch}"));
        let mut a = vec![
            "pretrain",
            "--task",
            "rotation",
            "--data",
            "builtin:fashion-mnist-demo",
            "--out",
            s(&run),
            "--set",
            "backbone=vit",
            "--set",
            &width_set,
            "--set",
            "steps=2",
            "--set",
            "warmup_steps=1",
            "--set",
            "batch_size=8",
            "--set",
            "limit=64",
            "--set",
            "log_every=1",
            "--set",
            "checkpoint_every=2",
            "--quiet",
        ];
        if patch > 0 {
            a.extend_from_slice(&["--set", &patch_set]);
        }
        ok(&a);
        let emb = root.join(format!("{name}.npy"));
        ok(&[
            "embed",
            "--from",
            s(&run),
            "--data",
            &data,
            "--out",
            s(&emb),
            "-q",
        ]);
        let (vectors, rows, dim) = npy::read(&emb).unwrap();
        assert_eq!((rows, dim), (24, width), "{name}");
        assert!(vectors.iter().all(|v| v.is_finite()));

        let onnx = root.join(format!("{name}.onnx"));
        let torch = root.join(format!("{name}-torch"));
        let stdout = ok(&[
            "export",
            "--from",
            s(&run),
            "--format",
            "onnx",
            "--out",
            s(&onnx),
        ]);
        assert!(stdout.contains("vit"), "{stdout}");
        ok(&[
            "export",
            "--from",
            s(&run),
            "--format",
            "torch",
            "--out",
            s(&torch),
        ]);
        check_onnx_structure(&onnx, "rotation", 2);
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(torch.join("config.json")).unwrap()).unwrap();
        let arch = &config["architecture"];
        assert_eq!(arch["name"], "vit", "{config}");
        assert_eq!(
            arch["patch"],
            if patch == 0 { 4 } else { patch },
            "{config}"
        );
        assert_eq!((&arch["depth"], &arch["heads"]), (&6.into(), &heads.into()));
        assert_eq!(arch["dim"], width);
        assert!(
            config["output"]
                .as_str()
                .unwrap()
                .contains("mean of the final tokens"),
            "{config}"
        );
        check_with_python(&name, root, &onnx, &torch, &data, 28, &emb);
    }
}

#[test]
fn similar_finds_the_query_image_itself_first() {
    let r = runs();
    let emb = r.root.join("similar/photos.npy");
    ok(&[
        "embed",
        "--from",
        s(&r.conv),
        "--data",
        &photos(),
        "--out",
        s(&emb),
        "-q",
    ]);
    let query = format!("{}/astronaut.png", shared_data("photos"));
    let stdout = ok(&[
        "similar",
        "--from",
        s(&r.conv),
        "--index",
        s(&emb),
        "--query",
        &query,
        "-k",
        "3",
    ]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    let first: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(first[0], "1", "{stdout}");
    assert!(first[1].parse::<f32>().unwrap() > 0.9999, "{stdout}");
    assert!(first[2].ends_with("astronaut.png"), "{stdout}");
    // An intermediate stage: the file says which, and `similar` follows it.
    let emb2 = r.root.join("similar/stage2.npy");
    ok(&[
        "embed",
        "--from",
        s(&r.conv),
        "--data",
        &photos(),
        "--out",
        s(&emb2),
        "--stage",
        "2",
        "-q",
    ]);
    assert_eq!(npy::read(&emb2).unwrap().2, 16);
    let stdout = ok(&[
        "similar",
        "--from",
        s(&r.conv),
        "--index",
        s(&emb2),
        "--query",
        &query,
        "-k",
        "1",
    ]);
    assert!(
        stdout.lines().nth(1).unwrap().ends_with("astronaut.png"),
        "{stdout}"
    );
}

#[test]
fn a_broken_file_stops_embed_or_is_left_out_with_skip_bad() {
    let r = runs();
    let dir = r.root.join("broken");
    let folder = dir.join("imgs");
    std::fs::create_dir_all(&folder).unwrap();
    let names = [
        "apple.jpg",
        "astronaut.png",
        "baboon.jpg",
        "chelsea.png",
        "coffee.png",
    ];
    for n in names {
        std::fs::copy(format!("{}/{n}", shared_data("photos")), folder.join(n)).unwrap();
    }
    // Not an image at all (fails at open), and a PNG cut in half (fails when decoded).
    std::fs::write(folder.join("b-garbage.jpg"), b"this is not a JPEG").unwrap();
    let png = std::fs::read(format!("{}/chelsea.png", shared_data("photos"))).unwrap();
    std::fs::write(folder.join("c-truncated.png"), &png[..png.len() / 2]).unwrap();
    let data = format!("folder:{}", folder.display());
    let emb = dir.join("emb.npy");
    let (code, err) = fails(&[
        "embed",
        "--from",
        s(&r.conv),
        "--data",
        &data,
        "--out",
        s(&emb),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("b-garbage.jpg") && err.contains("--skip-bad"),
        "{err}"
    );
    assert!(!emb.exists());

    // The garbage file removed: the truncated one fails while streaming, naming it.
    std::fs::rename(folder.join("b-garbage.jpg"), dir.join("garbage.jpg")).unwrap();
    let (code, err) = fails(&[
        "embed",
        "--from",
        s(&r.conv),
        "--data",
        &data,
        "--out",
        s(&emb),
    ]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("c-truncated.png"), "{err}");
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        !emb.exists() && left.len() == 2,
        "no partial file is left: {left:?}"
    );
    std::fs::rename(dir.join("garbage.jpg"), folder.join("b-garbage.jpg")).unwrap();

    let stdout = ok(&[
        "embed",
        "--from",
        s(&r.conv),
        "--data",
        &data,
        "--out",
        s(&emb),
        "--skip-bad",
        "-q",
    ]);
    assert!(stdout.contains("2 skipped"), "{stdout}");
    let rows = csv_rows(&emb);
    assert_eq!(rows.len(), names.len());
    assert_eq!(npy::read(&emb).unwrap().1, names.len());
    for (row, name) in rows.iter().zip(names) {
        assert!(row.contains(name), "{row} vs {name}");
    }
    let info: serde_json::Value =
        serde_json::from_slice(&std::fs::read(emb.with_extension("json")).unwrap()).unwrap();
    assert_eq!(info["skipped"], 2);
}

#[test]
fn bad_inputs_give_one_clear_line_and_exit_code_2() {
    let r = runs();
    let dir = r.root.join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("x.onnx");
    let check = |args: &[&str], want: &[&str]| {
        let (code, err) = fails(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        for w in want {
            assert!(err.contains(w), "{args:?}: {err} lacks {w}");
        }
    };
    check(
        &[
            "export",
            "--from",
            s(&r.conv),
            "--format",
            "tflite",
            "--out",
            s(&out),
        ],
        &["tflite", "onnx or torch"],
    );
    // A run directory whose encoder is gone (only run.json left).
    let bare = dir.join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    std::fs::copy(r.conv.join("run.json"), bare.join("run.json")).unwrap();
    check(
        &[
            "export",
            "--from",
            s(&bare),
            "--format",
            "onnx",
            "--out",
            s(&out),
        ],
        &["encoder.safetensors", "bare"],
    );
    check(
        &[
            "export",
            "--from",
            s(&dir),
            "--format",
            "onnx",
            "--out",
            s(&out),
        ],
        &["run.json"],
    );
    // A text run exported as an image model.
    let text = dir.join("text");
    std::fs::create_dir_all(&text).unwrap();
    std::fs::write(
        text.join("run.json"),
        serde_json::json!({
            "kind": "text", "task": "masked-lm", "data": "text:x.txt", "text_field": "text",
            "tokenizer": "tokenizer.json", "seq_len": 16,
            "spec": {"vocab": 260, "d_model": 16, "layers": 1, "heads": 2, "d_ff": 64,
                     "max_len": 16, "dropout": 0.0, "tie_weights": true, "causal": false}
        })
        .to_string(),
    )
    .unwrap();
    check(
        &[
            "export",
            "--from",
            s(&text),
            "--format",
            "onnx",
            "--out",
            s(&out),
        ],
        &["tokenizer.json", "missing"],
    );
    let jsonl = format!("jsonl:{}", dir.join("x.jsonl").display());
    check(
        &[
            "embed",
            "--from",
            s(&r.conv),
            "--data",
            &jsonl,
            "--out",
            s(&dir.join("e.npy")),
        ],
        &["image run", "jsonl:"],
    );
    check(
        &[
            "similar",
            "--from",
            s(&r.conv),
            "--index",
            s(&dir.join("e.parquet")),
            "--query",
            &format!("{}/astronaut.png", shared_data("photos")),
        ],
        &["similar", ".npy"],
    );
    check(
        &[
            "embed",
            "--from",
            s(&r.conv),
            "--stage",
            "7",
            "--out",
            s(&dir.join("e.npy")),
        ],
        &["--stage 7", "1 to 4"],
    );
    // The grayscale resnet run cannot embed colour photos.
    check(
        &[
            "embed",
            "--from",
            s(&r.res),
            "--data",
            &photos(),
            "--out",
            s(&dir.join("e.npy")),
        ],
        &["3×28×28", "1×28×28"],
    );
}

#[test]
fn text_runs_embed_each_document_as_its_mean_hidden_state() {
    let r = runs();
    let dir = r.root.join("text-run");
    std::fs::create_dir_all(&dir).unwrap();
    // A small masked-lm run on the start of Austen's novels.
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(
            std::fs::File::open(shared_data("text/austen.txt.gz")).unwrap(),
        ),
        &mut text,
    )
    .unwrap();
    let mut end = 20_000;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let txt = dir.join("austen.txt");
    std::fs::write(&txt, &text[..end]).unwrap();
    let run = dir.join("bert");
    ok(&[
        "pretrain",
        "--task",
        "masked-lm",
        "--data",
        &format!("text:{}", txt.display()),
        "--out",
        s(&run),
        "--tokenizer",
        "bytes",
        "--set",
        "d_model=32",
        "--set",
        "layers=1",
        "--set",
        "heads=2",
        "--set",
        "seq_len=32",
        "--set",
        "batch_size=4",
        "--set",
        "steps=3",
        "--set",
        "warmup_steps=1",
        "-q",
    ]);
    let jsonl = dir.join("docs.jsonl");
    // Batches of 2: the third document is padded next to the longer fourth, the first is not.
    let docs = [
        "Emma was handsome.",
        "",
        "Emma was handsome.",
        "A house in Kent, with a park of some extent.",
    ];
    let lines: Vec<String> = docs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            serde_json::json!({"text": d, "label": if i % 2 == 0 {"a"} else {"b"}}).to_string()
        })
        .collect();
    std::fs::write(&jsonl, lines.join("\n")).unwrap();
    let emb = dir.join("docs.npy");
    let stdout = ok(&[
        "embed",
        "--from",
        s(&run),
        "--data",
        &format!("jsonl:{}", jsonl.display()),
        "--out",
        s(&emb),
        "--batch-size",
        "2",
        "-q",
    ]);
    assert!(stdout.contains("documents/s"), "{stdout}");
    let (v, rows, dim) = npy::read(&emb).unwrap();
    assert_eq!((rows, dim), (4, 32));
    // The same text gives the same vector, padded or not.
    let max = (0..dim)
        .map(|j| (v[j] - v[2 * dim + j]).abs())
        .fold(0f32, f32::max);
    assert!(max < 1e-5, "{max}");
    let csv = csv_rows(&emb);
    assert!(
        csv[0].ends_with("docs.jsonl:1,a") && csv[3].ends_with("docs.jsonl:4,b"),
        "{csv:?}"
    );
}

/// Text runs made once: a masked-lm and a causal-lm run of the `tiny` preset (d_model 128, 4
/// layers, 4 heads, max_len 128), three steps each, on the start of Austen's novels; and the
/// documents they embed.
struct TextRuns {
    _dir: tempfile::TempDir,
    root: PathBuf,
    /// masked-lm with a byte-level BPE of 400 tokens trained on the slice.
    bert: PathBuf,
    /// causal-lm with the byte tokenizer.
    gpt: PathBuf,
    /// JSON lines of real documents (`text`, `label`): e-mails of the SpamAssassin corpus whole
    /// (longer than max_len) and cut short, paragraphs of Austen, one empty document.
    docs: PathBuf,
}

fn read_gz(path: &str) -> String {
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap()),
        &mut text,
    )
    .unwrap();
    text
}

fn cut(text: &str, mut end: usize) -> &str {
    end = end.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn text_runs() -> &'static TextRuns {
    static RUNS: OnceLock<TextRuns> = OnceLock::new();
    RUNS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let austen = read_gz(&shared_data("text/austen.txt.gz"));
        let txt = root.join("austen.txt");
        std::fs::write(&txt, cut(&austen, 40_000)).unwrap();
        let data = format!("text:{}", txt.display());
        let run = |task: &str, name: &str, tokenizer: &[&str]| {
            let out = root.join(name);
            let mut a = vec![
                "pretrain",
                "--task",
                task,
                "--data",
                &data,
                "--out",
                s(&out),
                "--set",
                "model=\"tiny\"",
                "--set",
                "steps=3",
                "--set",
                "batch_size=4",
                "--set",
                "seq_len=64",
                "--set",
                "warmup_steps=1",
                "-q",
            ];
            a.extend_from_slice(tokenizer);
            ok(&a);
            out
        };
        let bert = run("masked-lm", "bert", &["--set", "vocab=400"]);
        let gpt = run("causal-lm", "gpt", &["--tokenizer", "bytes"]);

        let mails: Vec<serde_json::Value> = read_gz(&shared_data("text/spamassassin.jsonl.gz"))
            .lines()
            .take(12)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let mut lines = Vec::new();
        for (i, m) in mails.iter().enumerate() {
            let text = m["text"].as_str().unwrap();
            // Whole (over max_len tokens), and cut to a few words up to a few hundred bytes.
            lines.push(serde_json::json!({"text": text, "label": m["label"]}));
            let short = cut(text, 7 + 29 * i);
            lines.push(serde_json::json!({"text": short, "label": m["label"]}));
        }
        for p in austen.split("\n\n").skip(40).take(5) {
            lines.push(serde_json::json!({"text": cut(p, 300), "label": "austen"}));
        }
        lines.insert(9, serde_json::json!({"text": "", "label": "empty"}));
        let docs = root.join("docs.jsonl");
        let body: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        std::fs::write(&docs, body.join("\n")).unwrap();
        TextRuns {
            _dir: dir,
            root,
            bert,
            gpt,
            docs,
        }
    })
}

/// The text exports on token ids made from the exported tokenizer by the rules the metadata
/// states give `pretext embed`'s vectors (tests/py/check_text_exports.py): onnxruntime (the
/// documents in batches of 5 and all at once, so with different padding), the shipped PyTorch
/// module, and a NumPy forward over the exported state dict; the `tokenizers` package's ids
/// equal pretext's.
#[test]
fn text_exports_give_the_vectors_of_embed() {
    let r = text_runs();
    let docs_spec = format!("jsonl:{}", r.docs.display());
    for (name, task, run) in [("bert", "masked-lm", &r.bert), ("gpt", "causal-lm", &r.gpt)] {
        let dir = r.root.join(format!("check-{name}"));
        std::fs::create_dir_all(&dir).unwrap();
        let emb = dir.join("emb.npy");
        // Batches of 8 in embed: its padding differs from the checks' batches of 5 and 7.
        ok(&[
            "embed",
            "--from",
            s(run),
            "--data",
            &docs_spec,
            "--out",
            s(&emb),
            "--batch-size",
            "8",
            "-q",
        ]);
        let (_, rows, dim) = npy::read(&emb).unwrap();
        assert_eq!(dim, 128, "{name}: the tiny preset");

        let onnx = dir.join("enc.onnx");
        let torch = dir.join("torch-export");
        let t = std::time::Instant::now();
        let stdout = ok(&[
            "export",
            "--from",
            s(run),
            "--format",
            "onnx",
            "--out",
            s(&onnx),
        ]);
        eprintln!(
            "{name}: {} ({:.2}s with the process)",
            stdout.trim(),
            t.elapsed().as_secs_f64()
        );
        assert!(
            stdout.contains("transformer") && stdout.contains(task),
            "{stdout}"
        );
        ok(&[
            "export",
            "--from",
            s(run),
            "--format",
            "torch",
            "--out",
            s(&torch),
        ]);
        // The tokenizer beside both, byte for byte the run's.
        let tok_json = std::fs::read(run.join("tokenizer.json")).unwrap();
        let tok_path = dir.join("enc.tokenizer.json");
        assert_eq!(std::fs::read(&tok_path).unwrap(), tok_json);
        assert_eq!(
            std::fs::read(torch.join("tokenizer.json")).unwrap(),
            tok_json
        );

        // A standard model: opset 17, int64 [batch, seq] inputs, the metadata of a text run.
        let model = ModelProto::parse_from_bytes(&std::fs::read(&onnx).unwrap()).unwrap();
        assert_eq!(model.opset_import.len(), 1);
        assert_eq!(model.opset_import[0].version, 17);
        assert!(model.opset_import[0].domain.is_empty());
        let graph = model.graph.as_ref().unwrap();
        let inputs: Vec<&str> = graph.input.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(inputs, ["input_ids", "attention_mask"]);
        for input in &graph.input {
            let Some(type_proto::Value::TensorType(t)) = &input.type_.value else {
                panic!("input is not a tensor");
            };
            assert_eq!(t.elem_type, 7, "int64");
            let dims: Vec<_> = t.shape.dim.iter().map(|d| d.value.clone()).collect();
            assert_eq!(
                dims,
                [
                    Some(dimension::Value::DimParam("batch".into())),
                    Some(dimension::Value::DimParam("seq".into()))
                ]
            );
        }
        let ops: std::collections::BTreeSet<&str> =
            graph.node.iter().map(|n| n.op_type.as_str()).collect();
        assert!(
            ops.contains("Erf") && ops.contains("LayerNormalization"),
            "{ops:?}"
        );
        let prop = |k: &str| {
            model
                .metadata_props
                .iter()
                .find(|p| p.key == k)
                .unwrap_or_else(|| panic!("no {k}"))
                .value
                .clone()
        };
        let meta: serde_json::Value = serde_json::from_str(&prop("pretext")).unwrap();
        assert_eq!(meta["kind"], "text");
        assert_eq!(meta["task"], task);
        assert_eq!(meta["steps"], 3);
        assert_eq!(meta["architecture"]["causal"], task == "causal-lm");
        assert_eq!(meta["tokenization"]["tokenizer"], "enc.tokenizer.json");
        assert_eq!(meta["tokenization"]["add_special_tokens"], false);
        assert_eq!(prop("max_len"), "128");
        assert!(prop("tokenization").contains("first 128 tokens"));
        let config: serde_json::Value =
            serde_json::from_slice(&std::fs::read(torch.join("config.json")).unwrap()).unwrap();
        assert_eq!(config["architecture"], meta["architecture"]);
        assert_eq!(config["tokenization"]["tokenizer"], "tokenizer.json");

        // Token ids by the stated rules, from the exported tokenizer file.
        let tok = pretext::data::tokenizer::Tokenizer::load(&tok_path).unwrap();
        let max_len = meta["tokenization"]["max_len"].as_u64().unwrap() as usize;
        let eos = meta["tokenization"]["eos_id"].as_u64().unwrap() as u32;
        let ids: Vec<Vec<u32>> = std::fs::read_to_string(&r.docs)
            .unwrap()
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let mut t = tok.encode(v["text"].as_str().unwrap());
                t.truncate(max_len);
                if t.is_empty() {
                    t.push(eos);
                }
                t
            })
            .collect();
        assert_eq!(ids.len(), rows);
        assert!(ids.iter().any(|d| d.len() == max_len) && ids.iter().any(|d| d.len() < 20));

        if !python_with_numpy(&format!("the Python checks ({name})")) {
            continue;
        }
        let ids_path = dir.join("ids.json");
        std::fs::write(&ids_path, serde_json::to_vec(&ids).unwrap()).unwrap();
        let out = Command::new("python3")
            .args([
                &py_script("check_text_exports.py"),
                s(&onnx),
                s(&torch),
                s(&ids_path),
                s(&r.docs),
                s(&emb),
            ])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        eprintln!("{name} ({task}):\n{report}");
        assert!(
            out.status.success(),
            "{name}: the exports differ from embed\n{report}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(report.contains("numpy reference") && report.contains("onnx"));
    }
}

/// `embed --out FILE.parquet` read back with pyarrow and pandas (tests/py/check_parquet.py)
/// equals `FILE.npy` + `FILE.csv`. Built with `--features parquet` (on by default).
#[cfg(feature = "parquet")]
#[test]
fn parquet_output_holds_the_npy_rows_ids_and_labels() {
    let r = runs();
    let t = text_runs();
    let dir = r.root.join("parquet");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, run, data) in [
        ("fashion", &r.jig, r.fashion64.clone()),
        ("photos", &r.conv, photos()),
        ("docs", &t.bert, format!("jsonl:{}", t.docs.display())),
    ] {
        let npy_path = dir.join(format!("{name}.npy"));
        let pq = dir.join(format!("{name}.parquet"));
        for out in [&npy_path, &pq] {
            ok(&[
                "embed",
                "--from",
                s(run),
                "--data",
                &data,
                "--out",
                s(out),
                "-q",
            ]);
        }
        assert!(pq.exists() && pq.with_extension("json").exists());
        let left: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(left.is_empty(), "temporary files left: {left:?}");
        if !python_with_numpy(&format!("reading {name}.parquet back")) {
            continue;
        }
        let out = Command::new("python3")
            .args([
                &py_script("check_parquet.py"),
                s(&pq),
                s(&npy_path),
                s(&npy_path.with_extension("csv")),
            ])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        eprintln!("{name}.parquet: {report}");
        assert!(
            out.status.success(),
            "{name}.parquet differs from the .npy\n{report}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn bad_text_exports_give_one_clear_line_and_exit_code_2() {
    let t = text_runs();
    let dir = t.root.join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let check = |args: &[&str], want: &[&str]| {
        let (code, err) = fails(args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        for w in want {
            assert!(err.contains(w), "{args:?}: {err} lacks {w}");
        }
    };
    let out = dir.join("x.onnx");
    // A run without its tokenizer file.
    let no_tok = dir.join("no-tokenizer");
    std::fs::create_dir_all(&no_tok).unwrap();
    for f in ["run.json", "encoder.safetensors"] {
        std::fs::copy(t.bert.join(f), no_tok.join(f)).unwrap();
    }
    for format in ["onnx", "torch"] {
        check(
            &[
                "export",
                "--from",
                s(&no_tok),
                "--format",
                format,
                "--out",
                s(&out),
            ],
            &["tokenizer.json", "missing", "no-tokenizer"],
        );
    }
    // A run without weights (no encoder.safetensors, no checkpoint).
    let no_weights = dir.join("no-weights");
    std::fs::create_dir_all(&no_weights).unwrap();
    for f in ["run.json", "tokenizer.json"] {
        std::fs::copy(t.bert.join(f), no_weights.join(f)).unwrap();
    }
    check(
        &[
            "export",
            "--from",
            s(&no_weights),
            "--format",
            "onnx",
            "--out",
            s(&out),
        ],
        &["encoder.safetensors", "no checkpoint"],
    );
    // ONNX into a directory; torch onto a file.
    check(
        &[
            "export",
            "--from",
            s(&t.bert),
            "--format",
            "onnx",
            "--out",
            s(&dir),
        ],
        &["a directory", "--format onnx"],
    );
    let file = dir.join("file");
    std::fs::write(&file, b"x").unwrap();
    check(
        &[
            "export",
            "--from",
            s(&t.bert),
            "--format",
            "torch",
            "--out",
            s(&file),
        ],
        &["a file", "--format torch"],
    );
    // --stage is for image encoders.
    check(
        &[
            "embed",
            "--from",
            s(&t.bert),
            "--stage",
            "2",
            "--out",
            s(&dir.join("e.npy")),
        ],
        &["--stage", "text"],
    );
    // Without the `parquet` feature, Parquet output says how to get it.
    #[cfg(not(feature = "parquet"))]
    check(
        &[
            "embed",
            "--from",
            s(&t.bert),
            "--out",
            s(&dir.join("e.parquet")),
        ],
        &["e.parquet", "--features parquet", ".npy"],
    );
    check(
        &[
            "embed",
            "--from",
            s(&t.bert),
            "--out",
            s(&dir.join("e.csv")),
        ],
        &["e.csv", ".npy or .parquet"],
    );
    assert!(!out.exists() && !dir.join("e.parquet").exists() && !dir.join("e.npy").exists());
}
