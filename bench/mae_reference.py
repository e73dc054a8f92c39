#!/usr/bin/env python3
"""PyTorch reference for MAE's accuracy at an equal budget: masked-autoencoder pretraining of a ViT
on Fashion-MNIST (src/tasks/mae.rs on src/nn/vit.rs: the model, batch layout and loss are
bench/reference.py's, imported from there), then few-label fine-tuning as src/transfer/finetune.rs
does it, against the same ViT fine-tuned from its random initialisation ("scratch").

Pretraining (`pretext pretrain --task mae --backbone vit`): --steps (or a --minutes wall-clock
budget) of --batch-size images, random resized crop (scale (crop_scale_min, 1), ratio (3/4, 4/3),
bilinear, as src/data/augment.rs random_resized_crop) and horizontal flip, normalised by the
training set's mean and std; per image a fresh random choice of k = clamp(floor(n(1 - ratio)), 1,
n - 1) visible patches; AdamW (betas (0.9, 0.999) as pretext's image runs, eps 1e-5), linear warm-up over --warmup steps then
cosine to --min-lr-ratio (engine/schedule.rs lr_at; with --minutes the cosine follows the elapsed
share of the budget).

Fine-tuning (transfer/finetune.rs), for each of --draws labelled subsets (--labels-per-class
training images of every class, drawn by seed 0, 1, ...): the whole encoder + Linear(d, 10) on the
mean-pooled tokens, cross-entropy, AdamW (lr 1e-3, weight decay 5e-4, betas (0.9, 0.999), eps 1e-5),
--finetune-steps batches of 64 (reshuffled epochs of the subset, last partial batch dropped),
warm-up over steps/20 then cosine to 0, random resized crop scale (0.8, 1) + flip; top-1 accuracy
on the test set (--test-limit images). The MAE encoder and the scratch encoder see the same subset,
head initialisation and augmentation draws; the scratch encoder is the pretraining's initial one.

Prints a table, then one JSON line with every number (the last line of stdout). Progress goes to
stderr. Exits 3 with {"error": "torch not installed"} when PyTorch is missing.

  python3 bench/mae_reference.py --threads 2                      # the real budget: 2000 steps
  python3 bench/mae_reference.py --steps 5 --finetune-steps 5 --draws 1 --test-limit 500  # smoke
  python3 bench/mae_reference.py --save-encoder mae.pt ...   # then --load-encoder mae.pt: fine-tuning
                                                            # variants without pretraining again
"""
import argparse
import copy
import gzip
import json
import math
import os
import random
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # importing reference.py leaves no bench/__pycache__
sys.path.insert(0, HERE)

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print(json.dumps({"error": "torch not installed"}))
    sys.exit(3)

from reference import VIT_PRESETS, MaeDecoder, backbone, decoder_width, features, mae_forward, masked_loss, patchify

# BackboneKind::default_width
DEFAULT_WIDTH = {"vit": 128, "vit-small": 384, "vit-base": 768}


# ---------------------------------------------------------------- data (IDX, plain or gzipped)

def resolve_data(path):
    """--data as given, else relative to the repository root (this script's parent's parent)."""
    if os.path.isabs(path) or os.path.isdir(path):
        return path
    return os.path.join(os.path.dirname(HERE), path)


def read_idx(folder, stem):
    """`stem` or `stem`.gz in `folder` → uint8 tensor [count, rows, cols] (images, magic 0x803) or
    [count] (labels, magic 0x801); big-endian header."""
    for name, opener in ((stem, open), (stem + ".gz", gzip.open)):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with opener(path, "rb") as f:
                data = f.read()
            break
    else:
        sys.exit(f"no {stem} or {stem}.gz in {folder}")
    magic, count = struct.unpack(">II", data[:8])
    if magic == 0x803:
        rows, cols = struct.unpack(">II", data[8:16])
        return torch.frombuffer(bytearray(data[16:]), dtype=torch.uint8).reshape(count, rows, cols)
    if magic == 0x801:
        return torch.frombuffer(bytearray(data[8:]), dtype=torch.uint8)[:count]
    sys.exit(f"{path}: unknown IDX magic {magic:#x}")


def load_fashion(folder):
    """Train and test images as float [n, 1, 28, 28] in [0, 1], labels int64."""
    out = []
    for split in ("train", "t10k"):
        x = read_idx(folder, f"{split}-images-idx3-ubyte").float().div(255.0).unsqueeze(1)
        y = read_idx(folder, f"{split}-labels-idx1-ubyte").long()
        out += [x, y]
    return out


# ---------------------------------------------------------------- augmentation (src/data/augment.rs)

def crop_box(rng, h, w, scale, ratio):
    """random_resized_crop's window (y, x, ch, cw): area share in `scale`, aspect log-uniform in
    `ratio`, up to 10 tries, else a centre crop clamped to `ratio`."""
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < cw <= w and 0 < ch <= h:
            return rng.randint(0, h - ch), rng.randint(0, w - cw), ch, cw
    in_ratio = w / h
    if in_ratio < min(ratio):
        ch, cw = min(max(round(w / min(ratio)), 1), h), w
    elif in_ratio > max(ratio):
        ch, cw = h, min(max(round(h * max(ratio)), 1), w)
    else:
        ch, cw = h, w
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def taps(start, size, out):
    """resize_bilinear's taps (half-pixel centres, clamped inside the crop) for a batch of windows
    starting at `start` of `size` pixels: first and second source index and the weight of the
    second, [B, out] each."""
    o = torch.arange(out, dtype=torch.float32)
    s = (o[None] + 0.5) * (size.float() / out)[:, None] - 0.5
    s = torch.minimum(s.clamp(min=0.0), (size - 1).float()[:, None])
    i0 = s.floor()
    f = s - i0
    i0 = i0.long()
    i1 = torch.minimum(i0 + 1, (size - 1)[:, None])
    return start[:, None] + i0, start[:, None] + i1, f


def resized_crops(imgs, boxes, out):
    """Each image's window (y, x, ch, cw) resized bilinearly to out x out: [B, C, H, W] → [B, C, out, out]."""
    b, c, _, w = imgs.shape
    y, x, ch, cw = (torch.tensor(v, dtype=torch.long) for v in zip(*boxes))
    y0, y1, fy = taps(y, ch, out)
    x0, x1, fx = taps(x, cw, out)
    rows = lambda idx: imgs.gather(2, idx[:, None, :, None].expand(b, c, out, w))
    cols = lambda r, idx: r.gather(3, idx[:, None, None, :].expand(b, c, out, out))
    fx, fy = fx[:, None, None, :], fy[:, None, :, None]
    top, bot = rows(y0), rows(y1)
    top = cols(top, x0) * (1 - fx) + cols(top, x1) * fx
    bot = cols(bot, x0) * (1 - fx) + cols(bot, x1) * fx
    return top * (1 - fy) + bot * fy


def augment(imgs, rng, crop_min, flip):
    """Random resized crop (when crop_min < 1) and horizontal flip (p 0.5), per image."""
    b, _, h, w = imgs.shape
    if crop_min < 1.0:
        imgs = resized_crops(imgs, [crop_box(rng, h, w, (crop_min, 1.0), (3 / 4, 4 / 3)) for _ in range(b)], h)
    if flip:
        flipped = torch.tensor([rng.random() < 0.5 for _ in range(b)])
        imgs = torch.where(flipped[:, None, None, None], imgs.flip(3), imgs)
    return imgs


def epochs(n, bs, gen):
    """Batches of indices: reshuffled epochs of 0..n, the last partial batch dropped."""
    while True:
        perm = torch.randperm(n, generator=gen)
        for i in range(0, n - bs + 1, bs):
            yield perm[i:i + bs]


# ---------------------------------------------------------------- pretraining (src/tasks/mae.rs)

def visible_count(n, ratio):
    """mae.rs visible_count: floor(n (1 - ratio)), at least 1, at most n - 1."""
    return min(max(int(math.floor(n * (1.0 - ratio))), 1), n - 1)


def random_masks(b, n, k, gen):
    """mae.rs make_batch's keep [b*k], restore [b*n] and mask [b, n] for a fresh uniform
    permutation of each image's patches (the first k visible)."""
    order = torch.rand(b, n, generator=gen).argsort(1)
    offset = (torch.arange(b) * n)[:, None]
    keep = (order[:, :k] + offset).reshape(-1)
    restore = (order.argsort(1) + offset).reshape(-1)
    mask = torch.ones(b, n).scatter_(1, order[:, :k], 0.0)
    return keep, restore, mask


def lr_at(step, base, warmup, total, min_ratio, frac=None):
    """engine/schedule.rs lr_at: linear warm-up, then cosine to min_ratio * base at `total`;
    `frac` (elapsed share of a --minutes budget) replaces the step share of the cosine."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = frac if frac is not None else (step - warmup) / max(total - warmup, 1)
    t = min(max(t, 0.0), 1.0)
    return base * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t)))


def set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


def pretrain(enc, dec, train_x, norm, a, dev):
    """MAE pretraining; returns (steps, seconds, losses)."""
    p, (h, w) = enc.patch, train_x.shape[2:]
    grid = (h // p, w // p)
    n = grid[0] * grid[1]
    k = visible_count(n, a.mask_ratio)
    opt = torch.optim.AdamW(list(enc.parameters()) + list(dec.parameters()), lr=a.lr,
                            weight_decay=a.weight_decay, betas=(0.9, 0.999), eps=1e-5)
    rng, gen = random.Random(a.seed), torch.Generator().manual_seed(a.seed)
    batches = epochs(train_x.shape[0], a.batch_size, gen)
    budget = a.minutes * 60.0
    losses, step, t0 = [], 0, time.perf_counter()
    enc.train(), dec.train()
    while True:
        elapsed = time.perf_counter() - t0
        if (budget > 0 and elapsed >= budget) or (budget <= 0 and step >= a.steps):
            break
        x = norm(augment(train_x[next(batches)], rng, a.crop_scale_min, a.flip)).to(dev)
        keep, restore, mask = (t.to(dev) for t in random_masks(x.shape[0], n, k, gen))
        set_lr(opt, lr_at(step, a.lr, a.warmup, a.steps, a.min_lr_ratio, elapsed / budget if budget > 0 else None))
        loss = masked_loss(mae_forward(enc, dec, x, keep, restore), patchify(x, p), mask, a.norm_pix_loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        step += 1
        if step % a.log_every == 0:
            print(f"pretrain {step}: loss {sum(losses[-a.log_every:]) / a.log_every:.4f} "
                  f"({step / (time.perf_counter() - t0):.2f} steps/s)", file=sys.stderr, flush=True)
    if dev.startswith("cuda"):
        torch.cuda.synchronize()
    return step, time.perf_counter() - t0, losses


# ---------------------------------------------------------------- fine-tuning (src/transfer/finetune.rs)

def labelled_subset(labels, per_class, seed):
    """transfer/labels.rs balanced_subset: `per_class` random examples of every class, by `seed`."""
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for c in labels.unique().tolist():
        idx = (labels == c).nonzero().squeeze(1)
        picks.append(idx[torch.randperm(idx.numel(), generator=gen)[:per_class]])
    return torch.cat(picks)


def accuracy(enc, head, x, y, norm, dev, chunk=500):
    enc.eval(), head.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, x.shape[0], chunk):
            logits = head(features(enc, norm(x[i:i + chunk]).to(dev)))
            correct += (logits.argmax(1).cpu() == y[i:i + chunk]).sum().item()
    return correct / x.shape[0]


def finetune(enc0, sub_x, sub_y, test_x, test_y, norm, a, seed, dev):
    """Encoder (a copy of enc0) + Linear(d, 10) trained end to end → test accuracy."""
    enc = copy.deepcopy(enc0).to(dev)
    torch.manual_seed(seed)
    head = nn.Linear(enc.dim, 10).to(dev)
    opt = torch.optim.AdamW(list(enc.parameters()) + list(head.parameters()), lr=a.finetune_lr,
                            weight_decay=a.finetune_weight_decay, betas=(0.9, 0.999), eps=1e-5)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    batches = epochs(sub_x.shape[0], min(a.finetune_batch, sub_x.shape[0]), gen)
    steps = a.finetune_steps
    enc.train(), head.train()
    for step in range(steps):
        set_lr(opt, lr_at(step, a.finetune_lr, steps // 20, steps, 0.0))
        idx = next(batches)
        x = norm(augment(sub_x[idx], rng, a.finetune_crop_scale_min, True)).to(dev)
        loss = F.cross_entropy(head(features(enc, x)), sub_y[idx].to(dev))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return accuracy(enc, head, test_x, test_y, norm, dev)


# ---------------------------------------------------------------- driver

def mean_std(v):
    """Mean and sample standard deviation (0 for a single value)."""
    m = sum(v) / len(v)
    return m, (math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0)


def count(module):
    return sum(p.numel() for p in module.parameters())


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/fashion-mnist", help="folder of the Fashion-MNIST IDX files")
    p.add_argument("--backbone", default="vit", choices=sorted(VIT_PRESETS))
    p.add_argument("--width", type=int, default=0, help="0 = the preset's")
    p.add_argument("--patch", type=int, default=4, help="patch side (28 must be a multiple); 0 = the preset's")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--minutes", type=float, default=0.0, help="pretraining wall-clock budget instead of --steps")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=1.5e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--min-lr-ratio", type=float, default=0.05)
    p.add_argument("--mask-ratio", type=float, default=0.75)
    p.add_argument("--decoder-width", type=int, default=0, help="0 = max(d/2, 32)")
    p.add_argument("--decoder-depth", type=int, default=2)
    p.add_argument("--no-norm-pix-loss", dest="norm_pix_loss", action="store_false")
    p.add_argument("--crop-scale-min", type=float, default=0.5)
    p.add_argument("--no-flip", dest="flip", action="store_false")
    p.add_argument("--labels-per-class", type=int, default=10)
    p.add_argument("--draws", type=int, default=3)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--finetune-batch", type=int, default=64)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--finetune-weight-decay", type=float, default=5e-4)
    p.add_argument("--finetune-crop-scale-min", type=float, default=0.8)
    p.add_argument("--test-limit", type=int, default=0, help="0 = all 10,000 test images")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--save-encoder", default="", help="write the pretrained encoder's state_dict here (torch.save)")
    p.add_argument("--load-encoder", default="",
                   help="skip pretraining: fine-tune this saved encoder (of --save-encoder, same model settings)")
    return p.parse_args()


def main():
    a = parse_args()
    t_start = time.perf_counter()
    torch.set_num_threads(a.threads)
    train_x, train_y, test_x, test_y = load_fashion(resolve_data(a.data))
    if a.test_limit > 0:
        test_x, test_y = test_x[:a.test_limit], test_y[:a.test_limit]
    mean, std = train_x.mean().item(), train_x.std().item()
    norm = lambda x: (x - mean) / std
    width = a.width or DEFAULT_WIDTH[a.backbone]
    torch.manual_seed(a.seed)
    enc = backbone(a.backbone, 1, width, a.patch)
    if train_x.shape[2] % enc.patch or train_x.shape[3] % enc.patch:
        sys.exit(f"mae needs whole patches: {tuple(train_x.shape[2:])} images, {enc.patch}-px patches")
    scratch = copy.deepcopy(enc)
    dd = decoder_width({"decoder_width": a.decoder_width}, enc.dim)
    dec = MaeDecoder(enc.dim, dd, a.decoder_depth, enc.patch * enc.patch * train_x.shape[1])
    enc, dec = enc.to(a.device), dec.to(a.device)

    if a.load_encoder:
        enc.load_state_dict(torch.load(a.load_encoder, map_location=a.device))
        steps, seconds, losses = 0, 0.0, []
        print(f"pretraining skipped: encoder read from {a.load_encoder}", file=sys.stderr, flush=True)
    else:
        steps, seconds, losses = pretrain(enc, dec, train_x, norm, a, a.device)
        if a.save_encoder:
            torch.save(enc.state_dict(), a.save_encoder)
    tail = losses[-min(20, len(losses)):] or [float("nan")]
    mae_acc, scratch_acc = [], []
    for draw in range(a.draws):
        sub = labelled_subset(train_y, a.labels_per_class, draw)
        for model, accs in ((enc, mae_acc), (scratch, scratch_acc)):
            accs.append(finetune(model, train_x[sub], train_y[sub], test_x, test_y, norm, a, draw, a.device))
        print(f"draw {draw}: mae {mae_acc[-1]:.4f} scratch {scratch_acc[-1]:.4f}", file=sys.stderr, flush=True)

    (mm, ms), (sm, ss) = mean_std(mae_acc), mean_std(scratch_acc)
    n = (train_x.shape[2] // enc.patch) * (train_x.shape[3] // enc.patch)
    out = {
        "backbone": a.backbone, "width": enc.dim, "depth": enc.n_stages, "patch": enc.patch,
        "patches": n, "visible": visible_count(n, a.mask_ratio), "decoder_width": dd,
        "decoder_depth": a.decoder_depth, "params_encoder": count(enc), "params_decoder": count(dec),
        "pretrain_steps": steps, "pretrain_batch": a.batch_size, "pretrain_seconds": seconds,
        "pretrain_steps_per_s": steps / seconds if seconds > 0 else 0.0,
        "pretrain_images_per_s": steps * a.batch_size / seconds if seconds > 0 else 0.0,
        "pretrain_loss_first": losses[0] if losses else float("nan"),
        "pretrain_loss_final": sum(tail) / len(tail),
        "labels_per_class": a.labels_per_class, "finetune_steps": a.finetune_steps,
        "test_images": test_x.shape[0], "mae_acc": mae_acc, "scratch_acc": scratch_acc,
        "mae_mean": mm, "mae_std": ms, "scratch_mean": sm, "scratch_std": ss,
        "wall_s": time.perf_counter() - t_start, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "device": a.device, "seed": a.seed,
    }
    print(f"MAE {a.backbone} d={enc.dim} depth={enc.n_stages} patch={enc.patch}: {steps} pretraining steps "
          f"of {a.batch_size} in {seconds:.1f} s ({out['pretrain_steps_per_s']:.2f} steps/s, "
          f"{out['pretrain_images_per_s']:.0f} images/s), loss {out['pretrain_loss_first']:.4f} -> "
          f"{out['pretrain_loss_final']:.4f} (mean of the last {len(tail)})")
    print(f"fine-tuning: {a.labels_per_class} labels per class, {a.finetune_steps} steps, "
          f"top-1 on {test_x.shape[0]} test images")
    print(f"{'draw':>6}  {'mae':>8}  {'scratch':>8}  {'gain':>8}")
    for d, (m, s) in enumerate(zip(mae_acc, scratch_acc)):
        print(f"{d:>6}  {m:8.4f}  {s:8.4f}  {m - s:+8.4f}")
    print(f"{'mean':>6}  {mm:8.4f}  {sm:8.4f}  {mm - sm:+8.4f}")
    print(f"{'std':>6}  {ms:8.4f}  {ss:8.4f}")
    print(f"wall {out['wall_s']:.1f} s")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
