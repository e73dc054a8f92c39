"""tests/export.rs: a text run's exports on token ids made from the exported tokenizer give
`pretext embed`'s vectors (onnxruntime, the PyTorch module, a NumPy forward; the `tokenizers`
package's ids against pretext's). Exits 1 when a difference is over 1e-4."""
import json, os, struct, sys
import numpy as np

from skips import missing

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
    missing("tokenizers", "not importable (%s)" % e)
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
    missing("onnx", "onnxruntime not importable (%s)" % e)
else:
    sess = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    run = lambda docs: sess.run(["features"], dict(zip(["input_ids", "attention_mask"], batch(docs))))[0]
    report("onnx (onnxruntime %s), batches of 5" % ort.__version__,
           np.concatenate([run(ids[i:i + 5]) for i in range(0, len(ids), 5)]))
    report("onnx, one batch", run(ids))

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
