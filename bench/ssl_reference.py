#!/usr/bin/env python3
"""PyTorch reference for SimCLR and BYOL at an equal budget: the demo's recipe (src/commands/demo.rs) on the
same conv net (bench/reference.py's ConvNet = src/nn/convnet.rs), the same views, losses, heads,
optimiser and schedule as src/tasks/simclr.rs and src/tasks/byol.rs, then the demo's evaluation:
linear probe, k-NN and fine-tuning of the pretrained encoder, linear and k-NN of random weights,
and fine-tuning from scratch, each with --labels-per-class labels per class over --draws draws.

Pretraining (`pretext demo`, or `pretext demo --set 'task="byol"'`): --steps batches of
--batch-size images (reshuffled epochs, last partial batch dropped), two views of each image
(src/data/views.rs, grey defaults: random resized crop scale (--crop-scale-min = 0.5, 1), ratio
(3/4, 4/3), bilinear as src/data/augment.rs; horizontal flip p 0.5; with probability --jitter-prob
brightness and contrast factors from [1 - 0.8 s, 1 + 0.8 s] (s = --jitter), in random order,
contrast around the view's mean, clamped to [0, 1]), normalised by the training set's mean and std.
The batch is split into --parts parts (pretext's replicas, src/engine/replicas.rs: 2 on a 2-core
machine, so 32 images each at the demo's batch of 64): each part is its own forward pass (batch-norm
statistics per part; SimCLR's negatives only from the part), each part's loss is scaled by
1/parts, and one AdamW step is taken on the summed gradient.
  simclr: backbone → ProjectionHead (Linear(dim, 512), BatchNorm1d, ReLU, Linear(512, 128)),
    L2-normalised; NT-Xent over the 2m views of a part of m images (temperature --temperature 0.2,
    a view's own similarity masked out, mean cross-entropy over the 2m rows).
  byol: online = backbone → projector (as above) → predictor ProjectionHead(128, 512, 128);
    target = a copy of backbone → projector, never trained (batch norm in training mode, as in
    pretext's target), moved after every step by target ← τ target + (1 − τ) online (parameters
    and batch-norm running statistics), τ = 1 − (1 − --momentum)(cos(π step/steps) + 1)/2 for the
    step just taken (byol.rs momentum_at); loss Σ over the 2m views of 2 − 2 cos(prediction,
    target projection of the other view) / m.
AdamW (betas (0.9, 0.999), eps 1e-5 = burn's defaults, weight decay --weight-decay on every
parameter; BYOL's predictor has its own optimiser in pretext with the same settings, which is the
same update), lr: linear warm-up over --warmup steps, then cosine to --min-lr-ratio × lr
(engine/schedule.rs lr_at).

Evaluation (src/transfer), for each draw d of --draws (label seed d): --labels-per-class images of
every class from the training set, evaluated on the test set (--test-limit: a seeded uniform
sample, as split.rs sample_limit). Random weights and scratch start from the backbone initialised
by seed d (as pretext's Source::Random / Scratch, seeded by the transfer seed).
  linear: batch-norm statistics re-estimated on up to 2,048 training images (equal-weight average
    over batches of 128, features.rs reestimate_bn), last-stage pooled features; standardiser fitted
    on 2,048 unlabelled training images (std floored at 1% of the mean std, linear_probe.rs),
    zero-initialised Linear(dim, 10), AdamW lr 1e-2, weight decay 1e-3, 500 steps of batches of
    min(256, n) from reshuffled epochs, warm-up steps/20 then cosine to 0.
  k-NN: the same re-estimated encoder; cosine similarity, the k = min(20, n labelled) nearest vote
    with weight exp(sim / 0.1) (knn.rs).
  fine-tune: the whole encoder (training mode) + a Linear(dim, 10) head, cross-entropy, AdamW lr
    1e-3, weight decay 5e-4, --finetune-steps batches of min(64, n) (reshuffled epochs, last partial
    batch dropped), each split into --parts parts as in pretraining, warm-up steps/20 then cosine
    to 0, random resized crop (0.8, 1) + flip; test accuracy with the running statistics. The
    head (--finetune-head, pretext's transfer.finetune_head, default auto): a pretrained encoder
    starts from a linear probe (LP-FT, Kumar et al. 2022; transfer/mod.rs probe_first): the
    encoder with the linear protocol's re-estimated batch-norm statistics, the linear protocol's
    probe on its last-stage features (the same standardiser, steps and lr, so here the very
    probe scored in the linear column), the standardiser folded into the head (W' = W / std,
    b' = b - sum W mean / std; linear_probe.rs folded); random weights and scratch start from the
    encoder's weights (batch norm as initialised) and a random Linear(dim, 10) seeded by d.
The table's ± is the population standard deviation over the draws, as src/commands/demo.rs prints it.

Differences from pretext that remain: random numbers (label draws, batch order, views, weights)
come from PyTorch's and Python's generators, not ChaCha8, so single numbers differ by draw noise;
batch-norm running statistics here are updated by every part (pretext keeps the leader replica's),
and PyTorch's running variance is the unbiased one; the pretraining k-NN monitor (eval_every) is not
run. Grey images only (the colour views' grayscale and blur are not implemented).

Prints a table, then one JSON line with every number (the last line of stdout). Progress goes to
stderr. Exits 3 with {"error": "torch not installed"} when PyTorch is missing.

  python3 bench/ssl_reference.py --method simclr --threads 2      # the demo's budget: 1000 × 64
  python3 bench/ssl_reference.py --method byol --threads 2
  python3 bench/ssl_reference.py --method byol --smoke            # seconds
"""
import argparse
import copy
import json
import math
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # importing the other references leaves no bench/__pycache__
sys.path.insert(0, HERE)

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print(json.dumps({"error": "torch not installed"}))
    sys.exit(3)

from mae_reference import crop_box, epochs, labelled_subset, load_fashion, lr_at, resized_crops, resolve_data, set_lr
from reference import backbone, features


# ---------------------------------------------------------------- views (src/data/views.rs)

def views(imgs, rng, gen, a):
    """One random view of each image [B, 1, H, W] in [0, 1]: resized crop, flip, brightness and
    contrast jitter (grey images: saturation does nothing, so only the order of the two counts)."""
    b, _, h, w = imgs.shape
    x = resized_crops(imgs, [crop_box(rng, h, w, (a.crop_scale_min, 1.0), (3 / 4, 4 / 3)) for _ in range(b)], h)
    if a.flip:
        flipped = torch.rand(b, generator=gen) < 0.5
        x = torch.where(flipped[:, None, None, None], x.flip(3), x)
    if a.jitter > 0:
        s = 0.8 * a.jitter
        lo, hi = max(1.0 - s, 0.0), 1.0 + s
        apply = (torch.rand(b, generator=gen) < a.jitter_prob)[:, None, None, None]
        fb = (lo + (hi - lo) * torch.rand(b, generator=gen))[:, None, None, None]
        fc = (lo + (hi - lo) * torch.rand(b, generator=gen))[:, None, None, None]
        bright_first = (torch.rand(b, generator=gen) < 0.5)[:, None, None, None]
        bright = lambda t: (t * fb).clamp(0.0, 1.0)
        contrast = lambda t: (fc * t + (1.0 - fc) * t.mean((1, 2, 3), keepdim=True)).clamp(0.0, 1.0)
        jittered = torch.where(bright_first, contrast(bright(x)), bright(contrast(x)))
        x = torch.where(apply, jittered, x)
    return x


# ---------------------------------------------------------------- heads and losses (nn/heads.rs, tasks/*.rs)

def projection_head(d_in, hidden, d_out):
    """ProjectionHead: Linear → BatchNorm1d → ReLU → Linear."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, d_out))


def nt_xent(z, temperature):
    """simclr.rs nt_xent: z [2m, d] L2-normalised, rows i and i+m a positive pair → (loss, acc)."""
    n2 = z.shape[0]
    m = n2 // 2
    logits = (z @ z.t()) / temperature
    logits = logits.masked_fill(torch.eye(n2, dtype=torch.bool, device=z.device), -1e9)
    targets = (torch.arange(n2, device=z.device) + m) % n2
    acc = (logits.detach().argmax(1) == targets).float().mean()
    return F.cross_entropy(logits, targets), acc


def byol_loss(p, z):
    """byol.rs byol_loss: Σ over 2m rows of 2 − 2 cos(p_i, z of the other view) / m."""
    m = z.shape[0] // 2
    swapped = torch.cat([z[m:], z[:m]], 0)
    return (2.0 - 2.0 * (F.normalize(p, dim=1) * F.normalize(swapped, dim=1)).sum(1)).sum() / m


def momentum_at(base, step, total):
    """byol.rs momentum_at: base rising to 1 on a cosine."""
    t = min(step / max(total, 1), 1.0)
    return 1.0 - (1.0 - base) * (math.cos(math.pi * t) + 1.0) / 2.0


class Projected(nn.Module):
    def __init__(self, enc, proj):
        super().__init__()
        self.enc, self.proj = enc, proj

    def forward(self, x):
        return self.proj(features(self.enc, x))


@torch.no_grad()
def ema_update(target, online, tau):
    """target ← τ target + (1 − τ) online, parameters and float buffers (running statistics)."""
    for t, o in zip(target.parameters(), online.parameters()):
        t.mul_(tau).add_(o.detach(), alpha=1.0 - tau)
    for t, o in zip(target.buffers(), online.buffers()):
        if t.is_floating_point():
            t.mul_(tau).add_(o, alpha=1.0 - tau)


# ---------------------------------------------------------------- pretraining

def pretrain(enc, train_x, norm, a, dev):
    """SimCLR or BYOL pretraining of `enc` in place; returns (steps, seconds, CPU seconds, losses)."""
    dim = enc.dim
    online = Projected(enc, projection_head(dim, a.proj_hidden, a.proj_dim)).to(dev)
    trained = list(online.parameters())
    if a.method == "byol":
        predictor = projection_head(a.proj_dim, a.proj_hidden, a.proj_dim).to(dev)
        target = copy.deepcopy(online)
        for p in target.parameters():
            p.requires_grad_(False)
        target.train()
        trained += list(predictor.parameters())
        predictor.train()
    opt = torch.optim.AdamW(trained, lr=a.lr, weight_decay=a.weight_decay, betas=(0.9, 0.999), eps=1e-5)
    rng, gen = random.Random(a.seed), torch.Generator().manual_seed(a.seed)
    batches = epochs(train_x.shape[0], a.batch_size, gen)
    online.train()
    losses, t0, c0 = [], time.perf_counter(), time.process_time()
    for step in range(a.steps):
        imgs = train_x[next(batches)]
        set_lr(opt, lr_at(step, a.lr, a.warmup, a.steps, a.min_lr_ratio))
        opt.zero_grad(set_to_none=True)
        total, b = 0.0, imgs.shape[0]
        for p in range(a.parts):
            part = imgs[p * b // a.parts:(p + 1) * b // a.parts]
            x = torch.cat([norm(views(part, rng, gen, a)), norm(views(part, rng, gen, a))], 0).to(dev)
            if a.method == "simclr":
                loss, _ = nt_xent(F.normalize(online(x), dim=1), a.temperature)
            else:
                with torch.no_grad():
                    z = target(x)
                loss = byol_loss(predictor(online(x)), z)
            (loss / a.parts).backward()
            total += loss.item() / a.parts
        opt.step()
        if a.method == "byol":
            ema_update(target, online, momentum_at(a.momentum, step, a.steps))
        losses.append(total)
        if (step + 1) % a.log_every == 0:
            print(f"pretrain {a.method} {step + 1}: loss {sum(losses[-a.log_every:]) / a.log_every:.4f} "
                  f"({(step + 1) / (time.perf_counter() - t0):.2f} steps/s)", file=sys.stderr, flush=True)
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    return a.steps, time.perf_counter() - t0, time.process_time() - c0, losses


# ---------------------------------------------------------------- transfer (src/transfer)

def sample_limit(n, limit, seed):
    """split.rs sample_limit: at most `limit` of 0..n, a seeded uniform sample kept in order."""
    if limit <= 0 or n <= limit:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed ^ 0x07E575E7))[:limit].sort().values


@torch.no_grad()
def extract(enc, x, norm, dev, chunk=256):
    enc.eval()
    return torch.cat([features(enc, norm(x[i:i + chunk]).to(dev)).cpu() for i in range(0, x.shape[0], chunk)])


@torch.no_grad()
def reestimate_bn(enc0, x, norm, dev, batch=128):
    """features.rs reestimate_bn: a copy of enc0 whose running mean and variance are the
    equal-weight average over batches of x (PyTorch's cumulative average, momentum None)."""
    enc = copy.deepcopy(enc0).to(dev)
    bns = [m for m in enc.modules() if isinstance(m, nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    enc.train()
    for i in range(0, x.shape[0], batch):
        if x[i:i + batch].shape[0] < 2:
            break
        features(enc, norm(x[i:i + batch]).to(dev))
    for m in bns:
        m.momentum = 0.1
    return enc.eval()


def standardizer(x):
    """linear_probe.rs standardizer: per-dimension mean and (population) std, floored at 1% of the
    mean std (and 1e-6)."""
    mean, std = x.mean(0), x.std(0, unbiased=False)
    return mean, std.clamp(min=max(1e-2 * std.mean().item(), 1e-6))


def linear_probe(tr_x, tr_y, te_x, te_y, pool_x, a, seed, with_probe=False):
    """linear_probe.rs train_probe → test accuracy, or with_probe: (accuracy, (head, mean, std)),
    the trained head over features standardised by (mean, std)."""
    mean, std = standardizer(pool_x)
    tr_x, te_x = (tr_x - mean) / std, (te_x - mean) / std
    head = nn.Linear(tr_x.shape[1], 10)
    nn.init.zeros_(head.weight), nn.init.zeros_(head.bias)
    opt = torch.optim.AdamW(head.parameters(), lr=a.probe_lr, weight_decay=a.probe_weight_decay,
                            betas=(0.9, 0.999), eps=1e-5)
    gen = torch.Generator().manual_seed(seed)
    batches = epochs(tr_x.shape[0], min(a.probe_batch, tr_x.shape[0]), gen)
    for step in range(a.probe_steps):
        set_lr(opt, lr_at(step, a.probe_lr, a.probe_steps // 20, a.probe_steps, 0.0))
        idx = next(batches)
        loss = F.cross_entropy(head(tr_x[idx]), tr_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        acc = (head(te_x).argmax(1) == te_y).float().mean().item()
    return (acc, (head, mean, std)) if with_probe else acc


@torch.no_grad()
def folded(head, mean, std):
    """linear_probe.rs TrainedProbe::folded: the same classifier over raw features,
    W' = W / std (per input feature), b' = b - sum_j W'_j mean_j."""
    w = head.weight / std[None, :]
    out = nn.Linear(head.in_features, head.out_features)
    out.weight.copy_(w)
    out.bias.copy_(head.bias - (w * mean[None, :]).sum(1))
    return out


def knn(tr_x, tr_y, te_x, te_y, k, temperature):
    sims = F.normalize(te_x, dim=1) @ F.normalize(tr_x, dim=1).t()
    top, idx = sims.topk(min(k, tr_x.shape[0]), dim=1)
    votes = torch.zeros(te_x.shape[0], 10).scatter_add_(1, tr_y[idx], (top / temperature).exp())
    return (votes.argmax(1) == te_y).float().mean().item()


def finetune(enc0, sub_x, sub_y, test_x, test_y, norm, a, seed, dev, head0=None):
    """finetune.rs: a copy of enc0 + a copy of head0 (a folded probe) or a seeded Linear(dim, 10),
    end to end → test accuracy."""
    enc = copy.deepcopy(enc0).to(dev)
    if head0 is not None:
        head = copy.deepcopy(head0).to(dev)
    else:
        torch.manual_seed(seed)
        head = nn.Linear(enc.dim, 10).to(dev)
    opt = torch.optim.AdamW(list(enc.parameters()) + list(head.parameters()), lr=a.finetune_lr,
                            weight_decay=a.finetune_weight_decay, betas=(0.9, 0.999), eps=1e-5)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    bs = min(a.finetune_batch, sub_x.shape[0])
    batches = epochs(sub_x.shape[0], bs, gen)
    parts = a.parts if bs % a.parts == 0 and bs // a.parts >= 2 else 1
    steps = a.finetune_steps
    enc.train(), head.train()
    for step in range(steps):
        set_lr(opt, lr_at(step, a.finetune_lr, steps // 20, steps, 0.0))
        idx = next(batches)
        opt.zero_grad(set_to_none=True)
        for p in range(parts):
            part = idx[p * bs // parts:(p + 1) * bs // parts]
            x = norm(augment(sub_x[part], rng, gen, a.finetune_crop_scale_min)).to(dev)
            (F.cross_entropy(head(features(enc, x)), sub_y[part].to(dev)) / parts).backward()
        opt.step()
    enc.eval(), head.eval()
    with torch.no_grad():
        logits = torch.cat([head(features(enc, norm(test_x[i:i + 500]).to(dev))).cpu()
                            for i in range(0, test_x.shape[0], 500)])
    return (logits.argmax(1) == test_y).float().mean().item()


def augment(imgs, rng, gen, crop_min):
    """Fine-tuning's augmentation: random resized crop (crop_min, 1) and flip."""
    b, _, h, w = imgs.shape
    if crop_min < 1.0:
        imgs = resized_crops(imgs, [crop_box(rng, h, w, (crop_min, 1.0), (3 / 4, 4 / 3)) for _ in range(b)], h)
    flipped = torch.rand(b, generator=gen) < 0.5
    return torch.where(flipped[:, None, None, None], imgs.flip(3), imgs)


# ---------------------------------------------------------------- driver

def mean_std(v):
    """Mean and population standard deviation, as src/commands/demo.rs."""
    m = sum(v) / len(v)
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / len(v))


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", choices=["simclr", "byol"], default="simclr")
    p.add_argument("--data", default="assets/fashion-mnist-demo",
                   help="folder of Fashion-MNIST IDX files (the demo's built-in 6,000/2,000 by default; "
                        "also ../shared/data/fashion-mnist)")
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--parts", type=int, default=2, help="pretext's replicas: 2 on a 2-core machine")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--temperature", type=float, default=0.2, help="simclr.temperature")
    p.add_argument("--momentum", type=float, default=0.99, help="byol.momentum (base)")
    p.add_argument("--proj-hidden", type=int, default=512)
    p.add_argument("--proj-dim", type=int, default=128)
    p.add_argument("--crop-scale-min", type=float, default=0.5, help="views.rs grey default (colour 0.2)")
    p.add_argument("--no-flip", dest="flip", action="store_false")
    p.add_argument("--jitter", type=float, default=0.5)
    p.add_argument("--jitter-prob", type=float, default=0.8)
    p.add_argument("--labels-per-class", type=int, default=10)
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--test-limit", type=int, default=0, help="0 = the whole test set")
    p.add_argument("--probe-steps", type=int, default=500)
    p.add_argument("--probe-batch", type=int, default=256)
    p.add_argument("--probe-lr", type=float, default=1e-2)
    p.add_argument("--probe-weight-decay", type=float, default=1e-3)
    p.add_argument("--knn-k", type=int, default=20)
    p.add_argument("--knn-temperature", type=float, default=0.1)
    p.add_argument("--finetune-steps", type=int, default=100, help="the demo's (pretext's own default is 300)")
    p.add_argument("--finetune-batch", type=int, default=64)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--finetune-weight-decay", type=float, default=5e-4)
    p.add_argument("--finetune-crop-scale-min", type=float, default=0.8)
    p.add_argument("--finetune-head", choices=["auto", "probe", "random"], default="auto",
                   help="transfer.finetune_head: auto = a linear probe's head for the pretrained encoder, "
                        "a random one for scratch")
    p.add_argument("--pool", type=int, default=2048, help="images for batch-norm re-estimation and the probe's standardiser")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--smoke", action="store_true", help="a few steps of everything (seconds)")
    a = p.parse_args()
    if a.smoke:
        a.steps, a.finetune_steps, a.probe_steps, a.draws, a.test_limit, a.pool = 4, 4, 20, 1, 300, 256
        a.warmup, a.log_every = 2, 2
    if a.batch_size % a.parts or a.batch_size // a.parts < 2:
        sys.exit(f"--parts {a.parts} must split --batch-size {a.batch_size} into equal parts of at least 2")
    return a


def main():
    a = parse_args()
    t_start = time.perf_counter()
    torch.set_num_threads(a.threads)
    dev = a.device
    train_x, train_y, test_x, test_y = load_fashion(resolve_data(a.data))
    mean, std = train_x.mean().item(), train_x.std(unbiased=False).item()
    norm = lambda x: (x - mean) / std
    torch.manual_seed(a.seed)
    enc = backbone("convnet", 1, a.width)
    steps, seconds, cpu_seconds, losses = pretrain(enc, train_x, norm, a, dev)
    enc = enc.cpu()

    acc = {k: [] for k in ("pre_linear", "pre_knn", "pre_finetune", "rand_linear", "rand_knn", "scratch_finetune")}
    for draw in range(a.draws):
        sub = labelled_subset(train_y, a.labels_per_class, draw)
        te = sample_limit(test_x.shape[0], a.test_limit, draw)
        tx, ty = test_x[te], test_y[te]
        bn_idx = sample_limit(train_x.shape[0], a.pool, draw ^ 0xB4)
        pool_idx = sample_limit(train_x.shape[0], a.pool, draw)
        torch.manual_seed(draw)
        rand_enc = backbone("convnet", 1, a.width)  # Source::Random / Scratch, seeded by the draw
        probed = {}  # name → (encoder with re-estimated batch norm, folded probe head)
        for name, e in (("pre", enc), ("rand", rand_enc)):
            e2 = reestimate_bn(e, train_x[bn_idx], norm, "cpu")
            f_tr, f_te = extract(e2, train_x[sub], norm, "cpu"), extract(e2, tx, norm, "cpu")
            linear, probe = linear_probe(f_tr, train_y[sub], f_te, ty, extract(e2, train_x[pool_idx], norm, "cpu"),
                                         a, draw, with_probe=True)
            acc[f"{name}_linear"].append(linear)
            probed[name] = (e2, folded(*probe))
            acc[f"{name}_knn"].append(knn(f_tr, train_y[sub], f_te, ty, a.knn_k, a.knn_temperature))
        # transfer/mod.rs: a probe-first fine-tune starts from the re-estimated encoder and the
        # folded probe (the linear protocol's, same seed and pool); otherwise the encoder as it is.
        for key, name, e, probe_first in (("pre_finetune", "pre", enc, a.finetune_head != "random"),
                                          ("scratch_finetune", "rand", rand_enc, a.finetune_head == "probe")):
            e, head0 = probed[name] if probe_first else (e, None)
            acc[key].append(finetune(e, train_x[sub], train_y[sub], tx, ty, norm, a, draw, dev, head0))
        print(f"draw {draw}: " + " ".join(f"{k} {v[-1]:.4f}" for k, v in acc.items()), file=sys.stderr, flush=True)

    tail = losses[-min(20, len(losses)):] or [float("nan")]
    out = {
        "method": a.method, "backbone": "convnet", "width": a.width, "dim": enc.dim,
        "pretrain_steps": steps, "pretrain_batch": a.batch_size, "parts": a.parts,
        "pretrain_seconds": seconds, "pretrain_cpu_seconds": cpu_seconds, "pretrain_images_per_s": steps * a.batch_size / seconds if seconds > 0 else 0.0,
        "pretrain_loss_first": losses[0] if losses else float("nan"), "pretrain_loss_final": sum(tail) / len(tail),
        "labels_per_class": a.labels_per_class, "draws": a.draws, "finetune_steps": a.finetune_steps,
        "finetune_head": a.finetune_head, "crop_scale_min": a.crop_scale_min,
        "train_images": train_x.shape[0], "test_images": int(min(test_x.shape[0], a.test_limit or test_x.shape[0])),
        **{k: v for k, v in acc.items()},
        **{f"{k}_mean": mean_std(v)[0] for k, v in acc.items()},
        **{f"{k}_std": mean_std(v)[1] for k, v in acc.items()},
        "wall_s": time.perf_counter() - t_start, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "device": dev, "seed": a.seed,
    }
    cell = lambda k: "{:.4f} ± {:.4f}".format(*mean_std(acc[k]))
    print(f"{a.method} on a width-{a.width} convnet: {steps} steps of {a.batch_size} ({a.parts} parts) "
          f"on {train_x.shape[0]} images in {seconds:.1f} s ({cpu_seconds:.1f} CPU s, {out['pretrain_images_per_s']:.0f} images/s), "
          f"loss {out['pretrain_loss_first']:.4f} -> {out['pretrain_loss_final']:.4f} (mean of the last {len(tail)})")
    print(f"test accuracy on {out['test_images']} test images, {a.labels_per_class} labels per class "
          f"(mean ± std over {a.draws} label draws):")
    print(f"{'encoder':<22} {'linear probe':>16} {'k-NN (k=20)':>16} {'fine-tune':>16}")
    print(f"{a.method + '-pretrained':<22} {cell('pre_linear'):>16} {cell('pre_knn'):>16} {cell('pre_finetune'):>16}")
    print(f"{'random weights':<22} {cell('rand_linear'):>16} {cell('rand_knn'):>16} {'—':>16}")
    print(f"{'scratch':<22} {'—':>16} {'—':>16} {cell('scratch_finetune'):>16}")
    print(f"wall {out['wall_s']:.1f} s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
