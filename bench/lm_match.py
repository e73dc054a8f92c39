#!/usr/bin/env python3
"""The causal language model's training matched against PyTorch: the run a `pretext pretrain
--task causal-lm` left (with `record_inputs = true` and `dropout = 0`) trained again, nanoGPT-style,
by the same transformer in PyTorch (`lm_reference.Transformer`) from the same initial weights on
the same windows in the same order, and the two validation-loss curves compared.

    python3 bench/lm_match.py RUN [--tolerance 0.02] [--json OUT.json] [--threads N]

What it reads from RUN (all written by pretext):
- config.toml: lr, warmup_steps, min_lr_ratio, steps, weight_decay, grad_clip(_mode),
  eval_every, batch_size, dropout, task;
- run.json: the model (vocab, d_model, layers, heads, d_ff, max_len, tie_weights);
- tokens/train.tokens, tokens/val.tokens (src/data/tokens.rs: `PTXTOK01`, vocabulary u32,
  count u64, then u32 tokens, all little-endian);
- record/init.safetensors, record/inputs.json (src/commands/pretrain/text_run.rs `write_record`: the
  weights before step 0, every step's window offsets, the validation windows' offsets);
- metrics.jsonl: pretext's curve (`val_loss` at step 0 and every `eval_every`; `loss`, `grad_norm`).

The training is pretext's, written out: windows of seq_len + 1 tokens, inputs the first seq_len,
targets the last; the loss the mean cross-entropy over every position; AdamW with betas
(0.9, 0.95), eps 1e-5 and decoupled weight decay (burn's AdamW, which is torch.optim.AdamW's
update) on the weight matrices and embeddings, not the biases and layer norms (nanoGPT's groups:
parameters of fewer than 2 dimensions, as pretext's src/engine/optim.rs; every parameter with
`decay_biases_and_norms = true`); the learning rate of src/engine/schedule.rs (linear warm-up from
lr/warmup, cosine to min_lr_ratio·lr at the last step); the gradients clipped to the global norm
`grad_clip` (torch.nn.utils.clip_grad_norm_), or per tensor with `grad_clip_mode = "per-tensor"`.
The validation loss is measured on the recorded windows in batches of batch_size (the mean over
every position) before the first step and after every eval_every steps and the last.

Prints the two curves side by side (Markdown) and the largest difference; exit status 0 when
every evaluation is within --tolerance nats, 1 when not, 2 on a run it cannot match, 3 without
torch.
"""
import argparse
import json
import math
import os
import sys
import time
import tomllib

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "python", "pretext"))

try:
    import torch
    import torch.nn.functional as F
except ImportError as e:
    print(json.dumps({"error": "torch not installed (%s)" % e}))
    sys.exit(3)

from lm_reference import Transformer  # noqa: E402  the same model as src/nn/transformer.rs
from pretext_encoder import read_safetensors  # noqa: E402


def fail(msg):
    print("lm_match: " + msg, file=sys.stderr)
    sys.exit(2)


def read_tokens(path):
    """A pretext token file as a uint32 array."""
    with open(path, "rb") as f:
        head = f.read(20)
    if head[:8] != b"PTXTOK01":
        fail("%s: not a pretext token file" % path)
    count = int.from_bytes(head[12:20], "little")
    return np.fromfile(path, dtype="<u4", offset=20, count=count)


def lr_at(step, base, warmup, total, min_ratio):
    """src/engine/schedule.rs `lr_at`."""
    if step < warmup:
        return base * (step + 1) / warmup
    span = max(total - warmup, 1)
    t = min((step - warmup) / span, 1.0)
    return base * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t)))


def load_init(model, path):
    """pretext's initial weights (burn's names and layout) into the PyTorch model."""
    state = {}
    for name, t in read_safetensors(path).items():
        module, _, leaf = name.rpartition(".")
        leaf = {"gamma": "weight", "beta": "bias"}.get(leaf, leaf)
        # burn's Linear weight is [in, out], nn.Linear's [out, in]; embeddings are [n, d] in both.
        if t.dim() == 2 and module not in ("tok", "pos"):
            t = t.t().contiguous()
        state[module + "." + leaf] = t
    model.load_state_dict(state, strict=True)


def windows(tokens, offsets, length):
    idx = np.asarray(offsets, dtype=np.int64)[:, None] + np.arange(length)[None, :]
    return torch.from_numpy(tokens[idx].astype(np.int64))


def loss_of(model, w):
    """Mean next-token cross-entropy over every position of windows w: [b, t + 1]."""
    x, y = w[:, :-1], w[:, 1:]
    logits = model(x)  # [b, t, vocab]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a pretext causal-lm run made with record_inputs = true")
    p.add_argument("--tolerance", type=float, default=0.02, help="nats (default 0.02)")
    p.add_argument("--json", help="write the curves and the difference here")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--clip-mode", choices=["global", "per-tensor"],
                   help="clip the reference's gradients so instead of as the run did (to see what "
                        "a mismatch looks like)")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    run = a.run
    with open(os.path.join(run, "config.toml"), "rb") as f:
        cfg = tomllib.load(f)
    with open(os.path.join(run, "run.json")) as f:
        spec = json.load(f)["spec"]  # src/engine/run_dir.rs LmInfo
    rec_dir = os.path.join(run, "record")
    if not os.path.exists(os.path.join(rec_dir, "inputs.json")):
        fail("%s has no record/: pretrain it with --set record_inputs=true" % run)
    with open(os.path.join(rec_dir, "inputs.json")) as f:
        rec = json.load(f)
    if cfg["task"] != "causal-lm":
        fail("task %s: only causal-lm is matched" % cfg["task"])
    if cfg["dropout"] != 0:
        fail("dropout %s: the match needs dropout = 0 (the two sides cannot draw the same masks)"
             % cfg["dropout"])
    pretext = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    if any(m.get("skipped") for m in pretext):
        fail("pretext skipped a step (NaN/Inf): nothing to match")

    train = read_tokens(os.path.join(run, "tokens", "train.tokens"))
    val = read_tokens(os.path.join(run, "tokens", "val.tokens"))
    wlen, bsz = rec["window_len"], rec["batch_size"]
    val_batches = [windows(val, rec["val_offsets"][i:i + bsz], wlen)
                   for i in range(0, len(rec["val_offsets"]), bsz)]

    model = Transformer(spec["vocab"], spec["d_model"], spec["layers"], spec["heads"], spec["d_ff"],
                        spec["max_len"], 0.0, True, tie=spec.get("tie_weights", True))
    load_init(model, os.path.join(rec_dir, "init.safetensors"))
    params = list(model.parameters())
    if cfg.get("decay_biases_and_norms", False):
        groups = [{"params": params, "weight_decay": cfg["weight_decay"]}]
    else:
        groups = [{"params": [p for p in params if p.dim() >= 2],
                   "weight_decay": cfg["weight_decay"]},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=cfg["lr"], betas=(0.9, 0.95), eps=1e-5)
    clip, mode = cfg["grad_clip"], a.clip_mode or cfg.get("grad_clip_mode", "global")

    def evaluate():
        model.eval()
        with torch.no_grad():
            # pretext: each batch's mean, weighted by its positions (all batches are full).
            v = float(np.mean([loss_of(model, w).item() for w in val_batches]))
        model.train()
        return v

    steps, every = cfg["steps"], cfg["eval_every"]
    torch_val = {0: evaluate()} if val_batches else {}
    torch_train, torch_norm = {}, {}
    t0 = time.time()
    for step in range(steps):
        lr = lr_at(step, cfg["lr"], cfg["warmup_steps"], steps, cfg["min_lr_ratio"])
        for g in opt.param_groups:
            g["lr"] = lr
        loss = loss_of(model, windows(train, rec["train_offsets"][step], wlen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if mode == "global":
            norm = torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf"))
        else:
            norm = torch.linalg.vector_norm(
                torch.stack([torch.linalg.vector_norm(q.grad) for q in params]))
            if clip > 0:
                for q in params:
                    torch.nn.utils.clip_grad_norm_(q, clip)
        opt.step()
        done = step + 1
        torch_train[done], torch_norm[done] = loss.item(), float(norm)
        if val_batches and (done % every == 0 or done == steps):
            torch_val[done] = evaluate()
    torch_s = time.time() - t0

    px_val = {m["step"]: m["val_loss"] for m in pretext if "val_loss" in m}
    px_train = {m["step"]: m["loss"] for m in pretext if "loss" in m}
    px_norm = {m["step"]: m["grad_norm"] for m in pretext if "grad_norm" in m}
    if set(px_val) != set(torch_val):
        fail("pretext evaluated at steps %s, the reference at %s"
             % (sorted(px_val), sorted(torch_val)))

    def fmt(d, s, digits=4):
        return ("%.*f" % (digits, d[s])) if s in d else "–"

    print("| step | pretext val loss | PyTorch val loss | difference | pretext train loss "
          "| PyTorch train loss | pretext grad norm | PyTorch grad norm |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    rows, worst = [], 0.0
    for s in sorted(torch_val):
        d = px_val[s] - torch_val[s]
        worst = max(worst, abs(d))
        rows.append({"step": s, "pretext": px_val[s], "torch": torch_val[s], "diff": d})
        print("| %d | %.4f | %.4f | %+.1e | %s | %s | %s | %s |" % (
            s, px_val[s], torch_val[s], d, fmt(px_train, s), fmt(torch_train, s),
            fmt(px_norm, s, 3), fmt(torch_norm, s, 3)))
    common = sorted(set(px_train) & set(torch_train))
    train_worst = max((abs(px_train[s] - torch_train[s]) for s in common), default=float("nan"))
    clipped = sum(1 for s in torch_norm if clip > 0 and torch_norm[s] > clip)
    first = min(common) if common else None
    ok = worst <= a.tolerance
    print()
    print("max |pretext - PyTorch| validation loss: %.2e nats over %d evaluations (tolerance %g): %s"
          % (worst, len(rows), a.tolerance, "MATCH" if ok else "NO MATCH"))
    print("max |difference| of the logged training losses: %.2e over %d steps; first step: "
          "loss %.6f vs %.6f, grad norm %s vs %.6f; %d of %d steps clipped (%s, grad_clip %g); "
          "PyTorch %s, %.1f s"
          % (train_worst, len(common), px_train.get(first, float("nan")),
             torch_train.get(first, float("nan")), fmt(px_norm, first, 6) if first else "–",
             torch_norm.get(first, float("nan")), clipped, steps, mode, clip,
             torch.__version__, torch_s))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"evaluations": rows, "max_abs_diff": worst, "tolerance": a.tolerance,
                       "match": ok, "max_train_loss_diff": train_worst, "clipped_steps": clipped,
                       "steps": steps, "torch": torch.__version__}, f, indent=1)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
