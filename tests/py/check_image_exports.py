"""tests/export.rs: an image run's ONNX and PyTorch exports (and a NumPy forward over the
exported weights) give `pretext embed`'s vectors. Exits 1 when a difference is over 1e-4."""
import json, os, struct, sys
import numpy as np

from skips import missing

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
    missing("onnx", "onnxruntime not importable (%s)" % e)
else:
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    got = sess.run(["features"], {"image": x})[0]
    one = np.concatenate([sess.run(["features"], {"image": x[i:i + 1]})[0] for i in range(3)])
    assert np.abs(one - got[:3]).max() < 1e-5, "batch of 1 differs from the whole batch"
    report("onnx (onnxruntime %s)" % ort.__version__, got)

try:
    import torch
except Exception as e:
    missing("torch", "torch not importable (%s)" % str(e).splitlines()[0][:120])
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
