//! `pretext embed`, `similar` and `export` end to end through the binary, on real data from
//! ../shared/data: the ONNX export run by onnxruntime and the PyTorch export run by the shipped
//! module (or, without torch, by a NumPy reference forward over the exported state dict) give
//! `pretext embed`'s vectors within 1e-4, for image runs and for text runs (masked-lm and
//! causal-lm transformers on tokenized e-mails and novels, padded batches); `--out FILE.parquet`
//! holds the .npy's rows (read back by pyarrow/pandas); a broken file with and without
//! `--skip-bad`; the query image comes back first; bad inputs give one clear line and exit
//! code 2.

mod common;

use common::{ok, pretext, shared_data};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use onnx_protobuf::tensor_shape_proto::dimension;
use onnx_protobuf::{type_proto, Message, ModelProto};
use pretext::data::{OpenOptions, Stream};
use pretext::embed::npy;

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

/// Compares the exports with `pretext embed`'s vectors; prints one line per check, exits 1 when
/// a difference is over 1e-4.
const CHECK_PY: &str = r#"
import json, os, struct, sys
sys.path.pop(0)  # not this script's folder: a directory there must not pass for a package
import numpy as np

onnx_path, torch_dir, pixels_path, emb_path = sys.argv[1:5]
cfg = json.load(open(os.path.join(torch_dir, "config.json")))
c, h, w = cfg["preprocessing"]["input_shape"]
x = np.load(pixels_path).reshape(-1, c, h, w).astype(np.float32)
want = np.load(emb_path)
assert want.shape[0] == x.shape[0], (want.shape, x.shape)
failed = False

def report(what, got):
    global failed
    d = float(np.abs(got - want).max())
    ok = d <= 1e-4
    failed |= not ok
    print("%s: max abs diff %.3g over %d images (%s)" % (what, d, len(x), "ok" if ok else "OVER 1e-4"))

try:
    import onnxruntime as ort
except Exception as e:
    print("onnx: skipped: onnxruntime not importable (%s)" % e)
else:
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = sess.run(["features"], {"image": x})[0]
    one = np.concatenate([sess.run(["features"], {"image": x[i:i + 1]})[0] for i in range(3)])
    assert np.abs(one - got[:3]).max() < 1e-5, "batch of 1 differs from the whole batch"
    report("onnx (onnxruntime %s)" % ort.__version__, got)

try:
    import torch
except Exception as e:
    print("torch: skipped: torch not importable (%s)" % str(e).splitlines()[0][:120])
    import py_compile
    py_compile.compile(os.path.join(torch_dir, "pretext_encoder.py"), doraise=True)
else:
    sys.path.insert(0, torch_dir)
    import pretext_encoder
    model = pretext_encoder.load(torch_dir)
    with torch.no_grad():
        got = model(torch.from_numpy(x)).numpy()
    report("torch %s (pretext_encoder.load)" % torch.__version__, got)

# Without torch too: a NumPy forward over the exported state dict, by its PyTorch names.
def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    head = json.loads(data[8:8 + n])
    kinds = {"F32": "<f4", "I64": "<i8"}
    return {k: np.frombuffer(data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]],
                             dtype=kinds[v["dtype"]]).reshape(v["shape"]).astype(np.float64)
            for k, v in head.items() if k != "__metadata__"}

sd = read_safetensors(os.path.join(torch_dir, cfg["weights"]))
eps = cfg["architecture"]["batch_norm_eps"]

def conv(x, name, stride):
    wt = sd[name + ".weight"]
    k = wt.shape[2]
    p = k // 2
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    oh = (x.shape[2] + 2 * p - k) // stride + 1
    ow = (x.shape[3] + 2 * p - k) // stride + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (k, k), axis=(2, 3))
    win = win[:, :, ::stride, ::stride][:, :, :oh, :ow]
    return np.einsum("ncijkl,ockl->noij", win, wt, optimize=True)

def bn(x, name):
    g, b = sd[name + ".weight"], sd[name + ".bias"]
    m, v = sd[name + ".running_mean"], sd[name + ".running_var"]
    r = lambda a: a.reshape(1, -1, 1, 1)
    return (x - r(m)) / np.sqrt(r(v) + eps) * r(g) + r(b)

relu = lambda a: np.maximum(a, 0)

def maxpool(x):
    n, ch, hh, ww = x.shape
    return x[:, :, :hh // 2 * 2, :ww // 2 * 2].reshape(n, ch, hh // 2, 2, ww // 2, 2).max(axis=(3, 5))

pre = cfg["preprocessing"]
if pre.get("per_image", False):
    z = x.astype(np.float64)
    z = z - z.mean(axis=(1, 2, 3), keepdims=True)
    z = z / np.maximum(np.sqrt((z * z).mean(axis=(1, 2, 3), keepdims=True)), 0.02)
else:
    z = (x.astype(np.float64) - np.array(pre["mean"]).reshape(1, -1, 1, 1)) / np.array(pre["std"]).reshape(1, -1, 1, 1)
from math import erf, sqrt
verf = np.vectorize(erf)

def ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + arch["layer_norm_eps"]) * sd[p + ".weight"] + sd[p + ".bias"]

def lin(x, p):
    return x @ sd[p + ".weight"].T + sd[p + ".bias"]

def vit(z):
    """src/nn/vit.rs: pad, patches (row, column, channel), embed + sine-cosine positions,
    blocks, norm, mean over the tokens."""
    p, d, h = arch["patch"], arch["width"], arch["heads"]
    n, ch = z.shape[:2]
    z = np.pad(z, ((0, 0), (0, 0), (0, -z.shape[2] % p), (0, -z.shape[3] % p)))
    gh, gw = z.shape[2] // p, z.shape[3] // p
    t = lin(z.reshape(n, ch, gh, p, gw, p).transpose(0, 2, 4, 3, 5, 1).reshape(n, gh * gw, p * p * ch), "embed")
    om = 1.0 / 10000.0 ** (np.arange(d // 4) / (d // 4))
    enc = lambda pos: np.concatenate([np.sin(pos[:, None] * om), np.cos(pos[:, None] * om)], 1)
    ys, xs = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")
    t = t + np.concatenate([enc(xs.reshape(-1)), enc(ys.reshape(-1))], 1)
    for i in range(arch["depth"]):
        b = "blocks.%d" % i
        qkv = lin(ln(t, b + ".ln1"), b + ".qkv").reshape(n, gh * gw, 3, h, d // h).transpose(2, 0, 3, 1, 4)
        s = qkv[0] @ qkv[1].transpose(0, 1, 3, 2) / sqrt(d // h)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ qkv[2]
        t = t + lin(ctx.transpose(0, 2, 1, 3).reshape(n, gh * gw, d), b + ".proj")
        f = lin(ln(t, b + ".ln2"), b + ".fc1")
        t = t + lin(0.5 * f * (1 + verf(f / sqrt(2))), b + ".fc2")
    return ln(t, "norm").mean(1)

arch = cfg["architecture"]
if arch["name"] in ("vit", "vit-small", "vit-base"):
    feats = vit(z)
elif arch["name"] == "convnet":
    for i in range(4):
        z = relu(bn(conv(z, "stages.%d.conv" % i, 1), "stages.%d.bn" % i))
        if i < 3 and z.shape[2] >= 2 and z.shape[3] >= 2:
            z = maxpool(z)
else:
    z = relu(bn(conv(z, "conv1", 1), "bn1"))
    for layer in range(1, 5):
        for block in range(2):
            p = "layer%d.%d" % (layer, block)
            stride = 2 if layer > 1 and block == 0 else 1
            y = relu(bn(conv(z, p + ".conv1", stride), p + ".bn1"))
            y = bn(conv(y, p + ".conv2", 1), p + ".bn2")
            if p + ".downsample.0.weight" in sd:
                z = bn(conv(z, p + ".downsample.0", stride), p + ".downsample.1")
            z = relu(y + z)
if arch["name"] not in ("vit", "vit-small", "vit-base"):
    feats = z.mean(axis=(2, 3))
report("numpy reference over %s" % cfg["weights"], feats)
sys.exit(1 if failed else 0)
"#;

/// `python3` with NumPy, or why not.
fn python_with_numpy() -> Result<(), String> {
    match Command::new("python3")
        .args(["-c", "import numpy"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => Err(format!("python3: {e}")),
    }
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

/// Runs CHECK_PY on the exports (`onnx`, the `torch` directory) against `pretext embed`'s
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
    if let Err(why) = python_with_numpy() {
        eprintln!("skipped the Python checks ({name}): python3 with numpy: {why}");
        return;
    }
    let pixels = dir.join("pixels.npy");
    write_pixels(data, size, &pixels);
    let script = dir.join("check.py");
    std::fs::write(&script, CHECK_PY).unwrap();
    let out = Command::new("python3")
        .args([s(&script), s(onnx), s(torch), s(&pixels), s(emb)])
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

/// Runs the text exports on token ids made from the exported tokenizer by the rules the
/// metadata states, and compares with `pretext embed`'s vectors: onnxruntime (the documents
/// in batches of 5 and all at once, so with different padding), the shipped PyTorch module,
/// and a NumPy forward over the exported state dict; where the `tokenizers` package imports,
/// its ids are compared with pretext's too. Exits 1 when a difference is over 1e-4.
const TEXT_CHECK_PY: &str = r#"
import json, os, struct, sys
sys.path.pop(0)
import numpy as np

onnx_path, torch_dir, ids_path, docs_path, emb_path = sys.argv[1:6]
ids = json.load(open(ids_path))
want = np.load(emb_path)
assert want.shape[0] == len(ids), (want.shape, len(ids))
cfg = json.load(open(os.path.join(torch_dir, "config.json")))
arch, tk = cfg["architecture"], cfg["tokenization"]
failed = False

def report(what, got):
    global failed
    d = float(np.abs(got - want).max())
    ok = d <= 1e-4
    failed |= not ok
    print("%s: max abs diff %.3g over %d documents (%s)" % (what, d, len(ids), "ok" if ok else "OVER 1e-4"))

def batch(docs):
    n = max(len(d) for d in docs)
    a = np.full((len(docs), n), tk["pad_id"], np.int64)
    m = np.zeros((len(docs), n), np.int64)
    for r, d in enumerate(docs):
        a[r, :len(d)] = d
        m[r, :len(d)] = 1
    return a, m

print("documents of %s tokens" % sorted(set(len(d) for d in ids)))
try:
    from tokenizers import Tokenizer
except Exception as e:
    print("tokenizers: skipped: not importable (%s)" % e)
else:
    tok = Tokenizer.from_file(onnx_path[:-len(".onnx")] + ".tokenizer.json")
    texts = [json.loads(l)["text"] for l in open(docs_path)]
    py = [tok.encode(t, add_special_tokens=False).ids[:tk["max_len"]] or [tk["eos_id"]] for t in texts]
    same = py == ids
    failed |= not same
    import tokenizers
    print("tokenizers %s: the same ids as pretext's tokenizer: %s" % (tokenizers.__version__, same))

try:
    import onnxruntime as ort
except Exception as e:
    print("onnx: skipped: onnxruntime not importable (%s)" % e)
else:
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    run = lambda docs: sess.run(["features"], dict(zip(["input_ids", "attention_mask"], batch(docs))))[0]
    report("onnx (onnxruntime %s), batches of 5" % ort.__version__,
           np.concatenate([run(ids[i:i + 5]) for i in range(0, len(ids), 5)]))
    report("onnx, one batch", run(ids))

try:
    import torch
except Exception as e:
    print("torch: skipped: torch not importable (%s)" % str(e).splitlines()[0][:120])
    import py_compile
    py_compile.compile(os.path.join(torch_dir, "pretext_encoder.py"), doraise=True)
else:
    sys.path.insert(0, torch_dir)
    import pretext_encoder
    model = pretext_encoder.load(torch_dir)
    assert type(model).__name__ == "TextEncoder"
    with torch.no_grad():
        got = np.concatenate([model(*model.batch(ids[i:i + 7])).numpy() for i in range(0, len(ids), 7)])
    report("torch %s (pretext_encoder.load), batches of 7" % torch.__version__, got)

# Without torch too: a NumPy forward over the exported state dict, by its PyTorch names.
data = open(os.path.join(torch_dir, cfg["weights"]), "rb").read()
(n,) = struct.unpack("<Q", data[:8])
head = json.loads(data[8:8 + n])
sd = {k: np.frombuffer(data[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]], dtype="<f4")
      .reshape(v["shape"]).astype(np.float64) for k, v in head.items() if k != "__metadata__"}
from math import erf, sqrt
verf = np.vectorize(erf)

def ln(x, p):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + arch["layer_norm_eps"]) * sd[p + ".weight"] + sd[p + ".bias"]

def lin(x, p):
    return x @ sd[p + ".weight"].T + sd[p + ".bias"]

def embed_one(doc):
    t, d, h = len(doc), arch["d_model"], arch["heads"]
    x = sd["tok.weight"][doc] + sd["pos.weight"][:t]
    for i in range(arch["layers"]):
        p = "blocks.%d" % i
        qkv = lin(ln(x, p + ".ln1"), p + ".qkv").reshape(t, 3, h, d // h).transpose(1, 2, 0, 3)
        s = qkv[0] @ qkv[1].transpose(0, 2, 1) / sqrt(d // h)
        if arch["causal"]:
            s = np.where(np.triu(np.ones((t, t), bool), 1), -np.inf, s)
        s = np.exp(s - s.max(-1, keepdims=True))
        ctx = (s / s.sum(-1, keepdims=True)) @ qkv[2]
        x = x + lin(ctx.transpose(1, 0, 2).reshape(t, d), p + ".proj")
        f = lin(ln(x, p + ".ln2"), p + ".fc1")
        x = x + lin(0.5 * f * (1 + verf(f / sqrt(2))), p + ".fc2")
    return ln(x, "ln_f").mean(0)

report("numpy reference over %s (each document alone)" % cfg["weights"], np.stack([embed_one(d) for d in ids]))
sys.exit(1 if failed else 0)
"#;

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

        if let Err(why) = python_with_numpy() {
            eprintln!("skipped the Python checks ({name}): python3 with numpy: {why}");
            continue;
        }
        let ids_path = dir.join("ids.json");
        std::fs::write(&ids_path, serde_json::to_vec(&ids).unwrap()).unwrap();
        let script = dir.join("check.py");
        std::fs::write(&script, TEXT_CHECK_PY).unwrap();
        let out = Command::new("python3")
            .args([
                s(&script),
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

#[cfg(feature = "parquet")]
/// Reads `FILE.parquet` back with pyarrow (through pandas when it imports) and compares it
/// with `FILE.npy` + `FILE.csv`: exit 0 and one line, or why it could not.
const PARQUET_CHECK_PY: &str = r#"
import csv, json, sys
sys.path.pop(0)
import numpy as np
try:
    import pyarrow.parquet as pq
except Exception as e:
    print("skipped: pyarrow not importable (%s)" % e)
    sys.exit(0)
pq_path, npy_path, csv_path = sys.argv[1:4]
t = pq.read_table(pq_path)
assert t.column_names == ["row", "id", "label", "embedding"], t.schema
import pyarrow as pa
typ = t.schema.field("embedding").type
assert pa.types.is_list(typ) and typ.value_type == pa.float32(), t.schema
want = np.load(npy_path)
rows = list(csv.DictReader(open(csv_path)))
try:
    import pandas as pd
except Exception:
    df = None
else:
    df = pd.read_parquet(pq_path)
emb = np.stack(df["embedding"] if df is not None else t.column("embedding").to_pylist())
assert emb.dtype == np.float32 and emb.shape == want.shape, (emb.dtype, emb.shape, want.shape)
assert (emb == want).all(), "vectors differ"
col = lambda c: t.column(c).to_pylist()
assert col("row") == list(range(len(rows)))
assert col("id") == [r["id"] for r in rows]
assert col("label") == [r["label"] or None for r in rows]
meta = json.loads(t.schema.metadata[b"pretext"])
assert meta["rows"] == len(rows), meta
print("ok: %d rows of %d floats equal the .npy bit for bit (%s)" % (emb.shape[0], emb.shape[1], "pandas" if df is not None else "pyarrow"))
"#;

/// Built with `--features parquet` (off by default: see Cargo.toml).
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
        if let Err(why) = python_with_numpy() {
            eprintln!("skipped reading {name}.parquet back: python3 with numpy: {why}");
            continue;
        }
        let script = dir.join("check.py");
        std::fs::write(&script, PARQUET_CHECK_PY).unwrap();
        let out = Command::new("python3")
            .args([
                s(&script),
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
