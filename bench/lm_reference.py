#!/usr/bin/env python3
"""PyTorch reference for the language-model rows of `pretext bench`: the same transformer as
src/nn/transformer.rs (pre-LayerNorm GPT-2 layout: token + learned position embeddings, fused
qkv, GELU MLP, final LayerNorm, head tied to the token embedding; causal or bidirectional), one
training step (forward, the vocabulary head and cross-entropy at the scored positions only,
backward, AdamW with betas (0.9, 0.95), weight decay 0.1, gradient norm clipped per parameter
tensor as burn does) at the same shapes, fp32.

Prints one JSON line: {"task", "params", "items_per_s" (tokens/s, median step), "step_ms_median", "cpu_ms_per_step", "peak_rss_mb",
"torch", "threads"}. Exits 3 with {"error": "torch not installed"} when PyTorch is missing."""
import argparse
import json
import resource
import sys
import time

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print(json.dumps({"error": "torch not installed"}))
    sys.exit(3)


class Block(nn.Module):
    def __init__(self, d, heads, d_ff, dropout, causal):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)
        self.drop = nn.Dropout(dropout)
        self.heads, self.causal = heads, causal

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        x = x + self.drop(self.proj(ctx.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.ln2(x)))))


class Transformer(nn.Module):
    """`tie=False`: a separate vocabulary head `head` (pretext's `tie_weights = false`)."""

    def __init__(self, vocab, d, layers, heads, d_ff, max_len, dropout, causal, tie=True):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(max_len, d)
        self.blocks = nn.ModuleList([Block(d, heads, d_ff, dropout, causal) for _ in range(layers)])
        self.ln_f = nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)
        self.head = None if tie else nn.Linear(d, vocab)

    def hidden(self, ids):
        t = ids.shape[1]
        x = self.drop(self.tok(ids) + self.pos(torch.arange(t, device=ids.device)))
        for blk in self.blocks:
            x = blk(x)
        return self.ln_f(x)

    def logits(self, h):
        return h @ self.tok.weight.t() if self.head is None else self.head(h)

    def forward(self, ids):
        return self.logits(self.hidden(ids))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--task", default="causal-lm", choices=["causal-lm", "masked-lm"])
    p.add_argument("--vocab", type=int, default=4096)
    p.add_argument("--d-model", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--d-ff", type=int, default=512)
    p.add_argument("--max-len", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device(a.device)
    causal = a.task == "causal-lm"
    model = Transformer(a.vocab, a.d_model, a.layers, a.heads, a.d_ff, a.max_len, a.dropout, causal).to(dev)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    b, t = a.batch_size, a.seq_len
    ids = torch.randint(0, a.vocab, (b, t + 1), device=dev)
    if causal:
        x, y, w = ids[:, :t], ids[:, 1:], torch.ones(b, t, device=dev)
    else:
        x, y = ids[:, :t].clone(), ids[:, :t]
        w = (torch.rand(b, t, device=dev) < 0.15).float()
        x[w.bool()] = 2

    # As pretext: the vocabulary head only at the scored positions (every one for the causal
    # model, the masked 15% for the masked one), then the mean cross-entropy over them.
    scored = w.reshape(-1).bool()
    targets = y.reshape(-1)[scored]

    def step():
        h = model.hidden(x).reshape(b * t, -1)
        loss = F.cross_entropy(model.logits(h if causal else h[scored]), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for prm in model.parameters():
            torch.nn.utils.clip_grad_norm_(prm, 1.0)
        opt.step()
        return loss.item()

    for _ in range(2):
        step()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    times = []
    c0 = time.process_time()
    for _ in range(a.steps):
        t0 = time.perf_counter()
        step()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    cpu_ms = (time.process_time() - c0) * 1e3 / a.steps
    dt = sorted(times)[len(times) // 2]
    print(json.dumps({
        "task": a.task,
        "params": params,
        "items_per_s": b * t / dt,
        "step_ms_median": dt * 1e3,
        "cpu_ms_per_step": cpu_ms,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
