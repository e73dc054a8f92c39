#!/usr/bin/env python3
"""PyTorch reference for pretext's semi-supervised stage from scratch on Fashion-MNIST:
`pretext transfer --from scratch --protocol semi --set width=32 --labels-per-class N`, with the
stage's defaults (src/transfer/mod.rs TransferConfig), step for step the same recipe:

Data (src/transfer/split.rs, src/nn/input.rs): the 60,000 training images are the unlabelled pool;
--labels-per-class images of every class are drawn from it as the labelled few (labels.rs
balanced_subset; --draw pretext, the default, reimplements pretext's generator, ChaCha8, and so
picks pretext's very images for --seed; --draw numpy draws other ones); evaluation on the 10,000
test images (--eval-on validation: on split.rs's 10% per class carving of the training images
instead, which then leaves the pool and the draw, drawn by the same generator). Inputs are
(x / 255 - mean) / std with the mean and the population std of the first 10,000 training images
(InputSpec::from_images).

Network (src/nn/convnet.rs via python/pretext/pretext_encoder.py's ConvNet, width 32, from random weights
seeded by --seed): four conv 3x3 (no bias) - BN - ReLU stages of 32/64/128/256 channels, 2x2
max-pooling after the first three, global average pooling, then a Linear(256, 10) head
(finetune.rs Classifier). PyTorch's default initialisation is burn's here (Kaiming-uniform,
bound 1/sqrt(fan_in), BN weight 1 bias 0).

Weak view (finetune.rs WeakView, src/data/augment.rs): random resized crop of (0.8, 1) of the area,
aspect log-uniform in (3/4, 4/3), up to 10 tries else a centre crop, bilinear with half-pixel
centres clamped inside the crop; horizontal flip with p 1/2.

1. Teacher (finetune.rs train_classifier, `finetune_*` defaults): the network trained on the
   labelled images alone, cross-entropy on weak views, --finetune-steps 300 batches of
   min(64, labelled) (reshuffled epochs, last partial batch dropped), AdamW (lr 1e-3, betas
   (0.9, 0.999), eps 1e-5 = burn's, decoupled weight decay 5e-4 on every parameter), lr linear
   warm-up over steps/20 then cosine to 0 (engine/schedule.rs lr_at). Then its logits on every
   pool image (eval mode), as semi_stage caches them: only read by --distill and by the teacher's
   pool accuracy printed here, but part of pretext's teacher time, so timed the same way.
2. Student (semi.rs train_student, `semi_*` defaults), starting from the teacher itself
   (semi_init = teacher; --init encoder: the random weights the teacher started from), a fresh
   AdamW (lr 1e-3, weight decay 5e-4, same betas/eps), lr warm-up steps/20 then cosine to 0, for
   --steps 3000 steps. Each step: mu*B = 7*32 = 224 pool images (reshuffled epochs of the pool,
   last partial batch dropped) and B = 32 labelled images (drawn without replacement from the
   labelled few each step, make_batch). Per pool image a weak view, and a strong view = RandAugment
   + Cutout applied to a second, independent weak view (make_batch: strong_view(weak.view(img))).
   - pseudo-labels: softmax of the student on the weak views, in eval mode (running BN
     statistics, no gradient: semi_weak_train_mode = false); distribution alignment (ReMixMatch):
     p <- normalise(p / (K * m)) with m the running mean of the raw weak-view predictions
     (starts uniform, m <- 0.99 m + 0.01 mean(p) after each step: Status.mean, ALIGN_MOMENTUM);
     class c = argmax, confidence = its aligned probability;
   - FlexMatch thresholds (semi.rs thresholds, no warm-up): sigma(c) = pool images whose last
     confident (aligned max > tau = 0.95) prediction was c, beta(c) = sigma(c) / max sigma,
     T(c) = tau beta / (2 - beta); tau for every class while no image has been confident yet.
     The status a step records is used from the next step on (Status.apply_before);
   - one training-mode forward of [B weak labelled views ; mu*B strong views];
     L = CE(labelled) + lambda_u * sum_i mask_i * CE(strong_i, pseudo_i) / (mu*B), lambda_u = 1,
     mask_i = [conf_i >= T(c_i)] (semi_loss); --distill adds T^2 * mean_i sum_c -q log softmax(z/T)
     of the teacher's cached logits q (off by default, as pretext's);
   - one AdamW step.
   Then batch norm is re-estimated (features.rs reestimate_bn) on a seeded sample of 2,048 clean
   pool images in batches of 128 (running statistics = the plain average over the batches).
3. Teacher and student evaluated in eval mode on the evaluation images.

Strong view (src/data/randaugment.rs): 2 operations drawn with replacement from AutoContrast,
Brightness, Color, Contrast, Equalize, Identity, Posterize, Rotate, Sharpness, ShearX, ShearY,
Solarize, TranslateX, TranslateY, each applied with p 1/2 at magnitude m = 1 - U[0, 1) with a
random sign: enhancements blend with factor 1 + 0.9 m (PIL ImageEnhance, clamped to [0, 1]);
posterize to 8 - round(4|m|) bits; solarize above 1 - |m|; rotation 30 m degrees; shear 0.3 m;
translation 0.3 m of the side; geometric operations map about the image centre, bilinear, what
comes from outside filled with the mean of the image's border pixels; equalize as PIL's; then
Cutout: a square of round(0.5 x side) pixels at a uniform centre (clipped at the edges) set to 0.5.

Where this differs from pretext's stage:
- random numbers: the labelled images (and the validation carving) are pretext's with --draw
  pretext, but the initial weights, batch order, views and the batch-norm sample come from
  numpy's and PyTorch's generators, not pretext's, so single runs differ by seed noise: compare
  numbers within the spread between seeds, not to the digit;
- pretext splits every batch over replicas (one per core) with synchronised batch norm, which is
  one batch to float rounding: here the batch is one forward (channels-last, the same numbers
  to float rounding), and the views are made on one thread before it (pretext makes them in
  loader workers beside the step), so --threads counts the model's threads only;
- PyTorch's running variance is the unbiased one (burn's: the biased one), a factor
  1 + 1/(pixels per channel in the batch - 1), below 0.1% here;
- of the stage's options that are off by default, the student's EMA (semi_ema), pseudo-labels
  from it and weak views in training mode are not implemented; FlexMatch's warm-up
  (--threshold-warmup), distillation (--distill) and fixed thresholds (--fixed-thresholds) are;
- the samples pretext takes with rand's choose_multiple (the 2,048 batch-norm images, the
  validation monitor's 2,000 images, --test-limit) are numpy's here, as are --pool-limit and
  --draw numpy; pretext's NaN-step skipping, checkpoints and resume are not reproduced.

Measured (the 2-core development machine, idle, torch 2.15 on the CPU, --threads 2, the command
below): teacher 0.7248, student 0.7793 on the 10,000 test images, 1,564 images/s in the student's
loop, 491 s for the student stage; pretext's own run of the same stage (docs/semi.md): 0.7227 ->
0.7808, about 1,400 images/s, 551 s. The same command on one thread: 0.7266 -> 0.7832 (float
rounding alone moves a run this much). Another label draw (--draw numpy, seed 0, one thread):
0.7037 -> 0.7082, so the stage's gain depends much on which images are labelled. Loading
pretext's student.safetensors into the Classifier below reproduces its 0.7808 exactly.

Prints a table, then one JSON line with every number (the last line of stdout; also written to
--out). Progress goes to stderr. Exits 3 with {"error": "torch not installed"} without PyTorch.

  python bench/semi_reference.py --data ../shared/data/fashion-mnist --labels-per-class 10 --seed 0 \\
      --steps 3000 --threads 2 --out /tmp/semi_ref.json
  python bench/semi_reference.py --eval-on validation ...     # choose settings here, not on test
  python bench/semi_reference.py --data ../shared/data/fashion-mnist --smoke      # seconds
"""
import argparse
import contextlib
import copy
import gzip
import json
import math
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # importing python/pretext/pretext_encoder.py leaves no __pycache__
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "python", "pretext"))

try:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
except ImportError:
    print(json.dumps({"error": "torch not installed"}))
    sys.exit(3)

from pretext_encoder import ConvNet  # src/nn/convnet.rs, layer for layer

CLASSES = 10
INPUT_STATS_IMAGES = 10_000  # InputSpec::from_images
BN_IMAGES, BN_BATCH = 2048, 128  # features.rs reestimate_bn
ALIGN_MOMENTUM = 0.99  # semi.rs
MONITOR_IMAGES = 2000  # semi_stage's validation monitor


# ---------------------------------------------------------------- data (IDX, gzipped or not)

def read_idx(folder, stem):
    """`stem`[.gz] in `folder` -> uint8 array [n, rows, cols] (images) or [n] (labels)."""
    for name, opener in ((stem, open), (stem + ".gz", gzip.open)):
        path = os.path.join(folder, name)
        if os.path.exists(path):
            with opener(path, "rb") as f:
                data = f.read()
            break
    else:
        sys.exit(f"no {stem} or {stem}.gz in {folder}")
    magic, count = (int(v) for v in np.frombuffer(data[:8], dtype=">u4"))
    if magic == 0x803:
        rows, cols = (int(v) for v in np.frombuffer(data[8:16], dtype=">u4"))
        return np.frombuffer(data[16:], dtype=np.uint8).reshape(count, rows, cols)
    if magic == 0x801:
        return np.frombuffer(data[8:], dtype=np.uint8)[:count]
    sys.exit(f"{path}: unknown IDX magic {magic:#x}")


def load_fashion(folder):
    """(train images float [60000, 1, 28, 28] in [0, 1], train labels, test images, test labels)."""
    out = []
    for split in ("train", "t10k"):
        x = read_idx(folder, f"{split}-images-idx3-ubyte")
        y = read_idx(folder, f"{split}-labels-idx1-ubyte")
        out += [torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1), torch.from_numpy(y.astype(np.int64))]
    return out


def rnd(v):
    """Rust's f32::round (half away from zero) for non-negative values."""
    return np.floor(np.asarray(v) + 0.5).astype(np.int64)


class ChaCha8:
    """pretext's label-draw generator: rand_chacha 0.3's ChaCha8Rng::seed_from_u64 (rand_core 0.6's
    PCG32 seed expansion; 8 rounds, 64-bit block counter, stream 0) with rand 0.8's slice shuffle
    (Fisher-Yates from the top, indices by UniformInt<u32>::sample_single's widening multiply
    with rejection). Pure Python: a 60,000-image draw takes about a second."""
    M32, M64 = 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF

    def __init__(self, seed):
        state, key = seed & self.M64, []
        for _ in range(8):
            state = (state * 6364136223846793005 + 11634580027462260723) & self.M64
            xorshifted, rot = (((state >> 18) ^ state) >> 27) & self.M32, state >> 59
            key.append(((xorshifted >> rot) | (xorshifted << ((32 - rot) % 32))) & self.M32)
        self.key, self.counter, self.block, self.at = key, 0, [], 16

    def next_u32(self):
        if self.at == 16:
            m = self.M32
            init = [0x61707865, 0x3320646E, 0x79622D32, 0x6B206574, *self.key, self.counter & m, self.counter >> 32, 0, 0]
            x = init[:]

            def quarter(a, b, c, d):
                x[a] = (x[a] + x[b]) & m; x[d] ^= x[a]; x[d] = ((x[d] << 16) | (x[d] >> 16)) & m
                x[c] = (x[c] + x[d]) & m; x[b] ^= x[c]; x[b] = ((x[b] << 12) | (x[b] >> 20)) & m
                x[a] = (x[a] + x[b]) & m; x[d] ^= x[a]; x[d] = ((x[d] << 8) | (x[d] >> 24)) & m
                x[c] = (x[c] + x[d]) & m; x[b] ^= x[c]; x[b] = ((x[b] << 7) | (x[b] >> 25)) & m
            for _ in range(4):  # 8 rounds
                quarter(0, 4, 8, 12), quarter(1, 5, 9, 13), quarter(2, 6, 10, 14), quarter(3, 7, 11, 15)
                quarter(0, 5, 10, 15), quarter(1, 6, 11, 12), quarter(2, 7, 8, 13), quarter(3, 4, 9, 14)
            self.block, self.at, self.counter = [(a + b) & m for a, b in zip(x, init)], 0, self.counter + 1
        self.at += 1
        return self.block[self.at - 1]

    def below(self, n):
        """gen_range(0..n) for a u32 n."""
        zone = ((n << (32 - n.bit_length())) & self.M32) - 1
        while True:
            v = self.next_u32() * n
            if v & self.M32 <= zone:
                return v >> 32

    def shuffle(self, idx):
        idx = [int(i) for i in idx]
        for i in range(len(idx) - 1, 0, -1):
            j = self.below(i + 1)
            idx[i], idx[j] = idx[j], idx[i]
        return np.array(idx, dtype=np.int64)


def shuffler(draw, seed):
    """Shuffles arrays of indices, one after the other, from one generator seeded by `seed`:
    pretext's (ChaCha8) or numpy's."""
    if draw == "pretext":
        return ChaCha8(seed).shuffle
    return np.random.default_rng(seed).permutation


def balanced_subset(labels, per_class, shuffle):
    """labels.rs balanced_subset: `per_class` random indices of every class, sorted."""
    out = []
    for c in range(int(labels.max()) + 1):
        idx = np.nonzero(labels == c)[0]
        if len(idx) < per_class:
            sys.exit(f"--labels-per-class {per_class}: class {c} has only {len(idx)} images")
        out.append(shuffle(idx)[:per_class])
    return np.sort(np.concatenate(out))


def holdout_split(labels, frac, shuffle):
    """labels.rs holdout_split: (rest, held out) with round(frac * n_c) of every class held out."""
    rest, held = [], []
    for c in range(int(labels.max()) + 1):
        idx = shuffle(np.nonzero(labels == c)[0])
        k = min(int(rnd(len(idx) * frac)), max(len(idx) - 1, 0))
        held.append(idx[:k])
        rest.append(idx[k:])
    return np.sort(np.concatenate(rest)), np.sort(np.concatenate(held))


def sample_limit(idx, limit, rng):
    """split.rs sample_limit: at most `limit` of `idx` (0 = all), uniformly, kept in order."""
    if limit == 0 or len(idx) <= limit:
        return idx
    return np.sort(rng.choice(idx, limit, replace=False))


def epochs(n, bs, rng):
    """Loader: batches of positions of reshuffled epochs of 0..n, the last partial batch dropped."""
    while True:
        perm = rng.permutation(n)
        for i in range(0, n - bs + 1, bs):
            yield perm[i:i + bs]


# ---------------------------------------------------------------- weak view (augment.rs, finetune.rs)

def crop_boxes(rng, n, h, w, scale, ratio):
    """random_resized_crop's windows (y, x, ch, cw), [n] each: area share in `scale`, aspect
    log-uniform in `ratio`, the first of 10 tries that fits, else a centre crop clamped to `ratio`."""
    target = h * w * rng.uniform(scale[0], scale[1], (n, 10))
    aspect = np.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1]), (n, 10)))
    cw, ch = rnd(np.sqrt(target * aspect)), rnd(np.sqrt(target / aspect))
    ok = (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
    first = ok.argmax(1)
    cw, ch = cw[np.arange(n), first], ch[np.arange(n), first]
    in_ratio = w / h
    if in_ratio < min(ratio):
        fh, fw = min(max(int(rnd(w / min(ratio))), 1), h), w
    elif in_ratio > max(ratio):
        fh, fw = h, min(max(int(rnd(h * max(ratio))), 1), w)
    else:
        fh, fw = h, w
    miss = ~ok.any(1)
    ch, cw = np.where(miss, fh, ch), np.where(miss, fw, cw)
    y = np.floor(rng.random(n) * (h - ch + 1)).astype(np.int64)
    x = np.floor(rng.random(n) * (w - cw + 1)).astype(np.int64)
    y, x = np.where(miss, (h - ch) // 2, y), np.where(miss, (w - cw) // 2, x)
    return y, x, ch, cw


def taps(start, size, out):
    """resize_bilinear's taps for windows at `start` of `size` pixels resized to `out`: (first,
    second source index, weight of the second), [n, out] each; half-pixel centres, clamped
    inside the window."""
    start, size = torch.from_numpy(start), torch.from_numpy(size)
    s = (torch.arange(out, dtype=torch.float32)[None] + 0.5) * (size.float() / out)[:, None] - 0.5
    s = torch.minimum(s.clamp(min=0.0), (size - 1).float()[:, None])
    i0 = s.floor()
    f = s - i0
    i0 = i0.long()
    i1 = torch.minimum(i0 + 1, (size - 1)[:, None])
    return start[:, None] + i0, start[:, None] + i1, f


def weak_views(imgs, rng, crop_scale_min=0.8, flip=True):
    """WeakView.view of each image [n, C, H, W] in [0, 1]: resized crop, then flip at p 1/2."""
    n, c, h, w = imgs.shape
    if crop_scale_min < 1.0 and h == w:
        y, x, ch, cw = crop_boxes(rng, n, h, w, (crop_scale_min, 1.0), (3 / 4, 4 / 3))
        y0, y1, fy = taps(y, ch, h)
        x0, x1, fx = taps(x, cw, w)
        rows = lambda idx: imgs.gather(2, idx[:, None, :, None].expand(n, c, h, w))
        cols = lambda r, idx: r.gather(3, idx[:, None, None, :].expand(n, c, h, w))
        fx, fy = fx[:, None, None, :], fy[:, None, :, None]
        top, bot = rows(y0), rows(y1)
        top = cols(top, x0) * (1 - fx) + cols(top, x1) * fx
        bot = cols(bot, x0) * (1 - fx) + cols(bot, x1) * fx
        imgs = top * (1 - fy) + bot * fy
    if flip:
        flipped = torch.from_numpy(rng.random(n) < 0.5)
        imgs = torch.where(flipped[:, None, None, None], imgs.flip(3), imgs)
    return imgs


# ---------------------------------------------------------------- strong view (randaugment.rs)
# Every operation takes images [k, C, H, W] in [0, 1] and signed magnitudes m [k] in [-1, 1].

def grayscale(x):
    if x.shape[1] != 3:
        return x
    luma = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return luma.expand_as(x)


def blend(x, degenerate, f):
    """degenerate + f (x - degenerate), clamped (PIL ImageEnhance)."""
    return (degenerate + f.view(-1, 1, 1, 1) * (x - degenerate)).clamp(0.0, 1.0)


def autocontrast(x, m):
    lo, hi = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    return torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-12), x)


def equalize(x, m):
    """PIL's ImageOps.equalize per channel on 256 levels."""
    k, c, h, w = x.shape
    plane = h * w
    level = torch.from_numpy(rnd((x.clamp(0.0, 1.0) * 255.0).numpy())).view(k * c, plane)
    hist = torch.zeros(k * c, 256, dtype=torch.long).scatter_add_(1, level, torch.ones_like(level))
    last_level = 255 - (hist.flip(1) > 0).long().argmax(1)
    step = (plane - hist.gather(1, last_level[:, None])) // 255  # [k*c, 1]
    lut = ((step // 2 + hist.cumsum(1) - hist) // step.clamp_min(1)).clamp(max=255).float() / 255.0
    out = lut.gather(1, level)
    return torch.where(step > 0, out, x.reshape(k * c, plane)).view(k, c, h, w)


def posterize(x, m):
    shift = torch.from_numpy(rnd(4.0 * m.abs().numpy())).view(-1, 1, 1, 1)  # 8 - bits
    level = torch.from_numpy(rnd((x.clamp(0.0, 1.0) * 255.0).numpy()))
    return ((level >> shift) << shift).float() / 255.0


def solarize(x, m):
    t = (1.0 - m.abs()).view(-1, 1, 1, 1)
    return torch.where(x >= t, 1.0 - x, x)


def smooth(x):
    """PIL's SMOOTH (3x3, centre 5, the rest 1, / 13) inside; border pixels unchanged."""
    c = x.shape[1]
    kernel = torch.ones(c, 1, 3, 3)
    kernel[:, :, 1, 1] = 5.0
    out = x.clone()
    out[:, :, 1:-1, 1:-1] = F.conv2d(x, kernel / 13.0, groups=c)
    return out


def affine(x, mats):
    """randaugment.rs affine: output pixel p reads the input at A (p - centre - t) + centre,
    bilinear, taps outside the image read the mean of its border pixels. mats: [k, 6] = a, b, tx,
    c, d, ty."""
    k, c, h, w = x.shape
    border = torch.ones(h, w, dtype=torch.bool)
    border[1:-1, 1:-1] = False
    fill = x[:, :, border].mean(2)  # [k, c]
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    ys = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, w)
    a, b, tx, cc, d, ty = (mats[:, i].view(k, 1, 1) for i in range(6))
    dx, dy = xs - cx - tx, ys - cy - ty
    sx, sy = a * dx + b * dy + cx, cc * dx + d * dy + cy
    y0, x0 = sy.floor(), sx.floor()
    fy, fx = (sy - y0)[:, None], (sx - x0)[:, None]
    flat = x.reshape(k, c, h * w)

    def at(yy, xx):
        inside = (yy >= 0) & (xx >= 0) & (yy <= h - 1) & (xx <= w - 1)
        idx = (yy.clamp(0, h - 1) * w + xx.clamp(0, w - 1)).long().view(k, 1, h * w).expand(k, c, h * w)
        v = flat.gather(2, idx).view(k, c, h, w)
        return torch.where(inside[:, None], v, fill[:, :, None, None])

    top = at(y0, x0) * (1 - fx) + at(y0, x0 + 1) * fx
    bot = at(y0 + 1, x0) * (1 - fx) + at(y0 + 1, x0 + 1) * fx
    return top * (1 - fy) + bot * fy


def geometric(kind):
    def op(x, m):
        z, o = torch.zeros_like(m), torch.ones_like(m)
        side = float(min(x.shape[2], x.shape[3]))
        if kind == "rotate":
            t = torch.deg2rad(30.0 * m)
            mats = [t.cos(), -t.sin(), z, t.sin(), t.cos(), z]
        elif kind == "shear_x":
            mats = [o, 0.3 * m, z, z, o, z]
        elif kind == "shear_y":
            mats = [o, z, z, 0.3 * m, o, z]
        elif kind == "translate_x":
            mats = [o, z, 0.3 * m * side, z, o, z]
        else:
            mats = [o, z, z, z, o, 0.3 * m * side]
        return affine(x, torch.stack(mats, 1))
    return op


OPS = [  # randaugment.rs POOL, FixMatch's order
    ("AutoContrast", autocontrast),
    ("Brightness", lambda x, m: blend(x, torch.zeros_like(x), 1.0 + 0.9 * m)),
    ("Color", lambda x, m: blend(x, grayscale(x), 1.0 + 0.9 * m)),
    ("Contrast", lambda x, m: blend(x, grayscale(x).mean((1, 2, 3), keepdim=True).expand_as(x), 1.0 + 0.9 * m)),
    ("Equalize", equalize),
    ("Identity", lambda x, m: x),
    ("Posterize", posterize),
    ("Rotate", geometric("rotate")),
    ("Sharpness", lambda x, m: blend(x, smooth(x), 1.0 + 0.9 * m)),
    ("ShearX", geometric("shear_x")),
    ("ShearY", geometric("shear_y")),
    ("Solarize", solarize),
    ("TranslateX", geometric("translate_x")),
    ("TranslateY", geometric("translate_y")),
]


def strong_views(x, rng, ops=2, magnitude=1.0, cutout=0.5):
    """strong_view of each image [n, C, H, W] in [0, 1]: `ops` RandAugment operations (each with
    p 1/2), then Cutout (grey 0.5)."""
    n, _, h, w = x.shape
    x = x.clone()
    for _ in range(ops):
        op = rng.integers(0, len(OPS), n)
        m = magnitude * (1.0 - rng.random(n))
        m = np.where(rng.random(n) < 0.5, m, -m).astype(np.float32)
        applied = rng.random(n) < 0.5
        for k, (_, fn) in enumerate(OPS):
            sel = np.nonzero(applied & (op == k))[0]
            if len(sel):
                sel_t = torch.from_numpy(sel)
                x[sel_t] = fn(x[sel_t], torch.from_numpy(m[sel]))
    if cutout > 0:
        side = int(rnd(cutout * min(h, w)))
        half = side // 2
        cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
        y0, y1 = np.maximum(cy - half, 0), np.minimum(cy + side - half, h)
        x0, x1 = np.maximum(cx - half, 0), np.minimum(cx + side - half, w)
        ys, xs = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
        t = lambda v: torch.from_numpy(v).view(n, 1, 1)
        box = (ys >= t(y0)) & (ys < t(y1)) & (xs >= t(x0)) & (xs < t(x1))
        x = torch.where(box[:, None], torch.full_like(x, 0.5), x)
    return x


# ---------------------------------------------------------------- model (finetune.rs Classifier)

class Classifier(nn.Module):
    def __init__(self, in_channels, width, classes):
        super().__init__()
        self.backbone = ConvNet(in_channels, width)
        self.head = nn.Linear(self.backbone.dim, classes)

    def forward(self, x):
        x = x.contiguous(memory_format=torch.channels_last)  # the model is channels-last (see build)
        return self.head(self.backbone.forward_to(x, 4).mean(dim=(2, 3)))


def build(width, seed):
    """The classifier with random weights seeded by `seed`, channels-last: the same network and
    numbers to float rounding, 2-3x faster on the CPU than PyTorch's default layout here."""
    torch.manual_seed(seed)
    return Classifier(1, width, CLASSES).to(memory_format=torch.channels_last)


@contextlib.contextmanager
def one_thread():
    """Views are made of many small tensor ops, which only lose to OpenMP's synchronisation
    (10-50x slower on 2 threads of a busy 2-core machine): they run on one thread, the model on
    --threads (pretext likewise makes batches in loader workers beside the model's threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def adamw(model, lr, weight_decay):
    """engine/optim.rs optimizer(Adamw): burn's AdamW defaults."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-5, weight_decay=weight_decay)


def lr_at(step, base, warmup, total, min_ratio=0.0):
    """engine/schedule.rs lr_at: linear warm-up, then cosine to min_ratio * base at `total`."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = min((step - warmup) / max(total - warmup, 1), 1.0)
    return base * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t)))


def set_lr(opt, lr):
    for g in opt.param_groups:
        g["lr"] = lr


@torch.no_grad()
def logits_on(model, x, norm, chunk=500):
    model.eval()
    out = torch.cat([model(norm(x[i:i + chunk])) for i in range(0, x.shape[0], chunk)])
    model.train()
    return out


def accuracy(model, x, y, norm):
    return (logits_on(model, x, norm).argmax(1) == y).float().mean().item()


@torch.no_grad()
def reestimate_bn(model, x, norm):
    """features.rs reestimate_bn: running statistics = the plain average over batches of
    BN_BATCH of `x` (momentum 1/(k+1) = PyTorch's cumulative average, momentum None)."""
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None
    model.train()
    for i in range(0, x.shape[0], BN_BATCH):
        if x[i:i + BN_BATCH].shape[0] < 2:
            break
        model(norm(x[i:i + BN_BATCH]))
    for bn in bns:
        bn.momentum = 0.1


# ---------------------------------------------------------------- the stage (transfer/semi.rs)

def thresholds(selected, classes, tau, adaptive, warmup):
    """semi.rs thresholds: FlexMatch's tau beta / (2 - beta) per class."""
    if not adaptive:
        return np.full(classes, tau, dtype=np.float32)
    sigma = np.bincount(selected[selected >= 0], minlength=classes)[:classes]
    unused = int((selected < 0).sum())
    if sigma.max() == 0:
        return np.full(classes, tau, dtype=np.float32)
    denom = max(sigma.max(), unused) if warmup else sigma.max()
    beta = sigma / denom
    return (tau * beta / (2.0 - beta)).astype(np.float32)


def train_teacher(model, lab_x, lab_y, norm, a, rng):
    """finetune.rs train_classifier: the classifier on the labelled images alone."""
    opt = adamw(model, a.finetune_lr, a.finetune_weight_decay)
    batches = epochs(lab_x.shape[0], min(a.finetune_batch, lab_x.shape[0]), rng)
    model.train()
    for step in range(a.finetune_steps):
        set_lr(opt, lr_at(step, a.finetune_lr, a.finetune_steps // 20, a.finetune_steps))
        idx = torch.from_numpy(next(batches))
        with one_thread():
            x = norm(weak_views(lab_x[idx], rng, a.crop_scale_min, a.flip))
        loss = F.cross_entropy(model(x), lab_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (step + 1) % a.log_every == 0:
            print(f"finetune {step + 1}: loss {loss.item():.4f}", file=sys.stderr, flush=True)


def train_student(model, lab_x, lab_y, pool_x, pool_y, teacher_logits, norm, a, rng, monitor=None):
    """semi.rs train_student without the engine: returns (loop seconds, log rows, status)."""
    n_u, b_l, k = a.ratio * a.batch_size, a.batch_size, CLASSES
    opt = adamw(model, a.lr, a.weight_decay)
    batches = epochs(pool_x.shape[0], n_u, rng)
    selected = np.full(pool_x.shape[0], -1, dtype=np.int64)  # Status.selected
    mean = np.full(k, 1.0 / k, dtype=np.float32)  # Status.mean
    log, acc = [], {}
    t0 = time.perf_counter()
    model.train()
    for step in range(a.steps):
        set_lr(opt, lr_at(step, a.lr, a.steps // 20, a.steps))
        pos = next(batches)
        n_lab = lab_x.shape[0]
        chosen = rng.choice(n_lab, b_l, replace=False) if b_l <= n_lab else rng.integers(0, n_lab, b_l)
        chosen, pos_t = torch.from_numpy(chosen), torch.from_numpy(pos)
        with one_thread():
            imgs = pool_x[pos_t]
            lab = norm(weak_views(lab_x[chosen], rng, a.crop_scale_min, a.flip))
            weak = norm(weak_views(imgs, rng, a.crop_scale_min, a.flip))
            strong = norm(strong_views(weak_views(imgs, rng, a.crop_scale_min, a.flip), rng,
                                       a.strong_ops, a.strong_magnitude, a.cutout))
        # Pseudo-labels from the weak views, by the student as it stands (eval mode).
        model.eval()
        with torch.no_grad():
            probs = F.softmax(model(weak), 1).numpy()
        model.train()
        t = thresholds(selected, k, a.threshold, a.adaptive, a.threshold_warmup)
        if a.align:
            aligned = probs / (k * np.maximum(mean, 1e-6))
            aligned /= np.maximum(aligned.sum(1, keepdims=True), 1e-12)
        else:
            aligned = probs
        cls, conf = aligned.argmax(1), aligned.max(1)
        mask = (conf >= t[cls]).astype(np.float32)
        over = conf > a.threshold
        selected[pos[over]] = cls[over]  # read from the next step on
        mean = (ALIGN_MOMENTUM * mean + (1.0 - ALIGN_MOMENTUM) * probs.astype(np.float64).mean(0)).astype(np.float32)
        # One forward of the labelled weak views and the unlabelled strong views.
        logits = model(torch.cat([lab, strong]))
        logits_l, logits_u = logits[:b_l], logits[b_l:]
        y = lab_y[chosen]
        loss = F.cross_entropy(logits_l, y)
        picked = F.log_softmax(logits_u, 1).gather(1, torch.from_numpy(cls)[:, None]).squeeze(1)
        l_fix = -(picked * torch.from_numpy(mask)).sum() / n_u
        if a.consistency > 0:
            loss = loss + a.consistency * l_fix
        if a.distill > 0:
            q = F.softmax(teacher_logits[pos_t] / a.temperature, 1)
            l_distil = -(q * F.log_softmax(logits_u / a.temperature, 1)).sum() * a.temperature ** 2 / n_u
            loss = loss + a.distill * l_distil
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        # Diagnostics (pool labels only measure the kept pseudo-labels, as pretext's pseudo_acc).
        kept = mask > 0
        truth = pool_y[pos_t].numpy()
        row = {"loss": loss.item(), "l_fix": l_fix.item(),
               "acc": (logits_l.argmax(1) == y).float().mean().item(), "mask": float(kept.mean()),
               "threshold": float(t.mean()),
               "pseudo_acc": float((truth[kept] == cls[kept]).mean()) if kept.any() else 0.0}
        for key, v in row.items():
            acc[key] = acc.get(key, 0.0) + v
        if (step + 1) % a.log_every == 0 or step + 1 == a.steps:
            span = (step % a.log_every) + 1
            entry = {"step": step + 1, "lr": opt.param_groups[0]["lr"], **{key: v / span for key, v in acc.items()}}
            acc = {}
            elapsed = time.perf_counter() - t0
            msg = (f"semi {step + 1}/{a.steps}: loss {entry['loss']:.4f} l_fix {entry['l_fix']:.4f} "
                   f"mask {entry['mask']:.3f} pseudo_acc {entry['pseudo_acc']:.3f} threshold {entry['threshold']:.3f} "
                   f"({(step + 1) * (b_l + n_u) / elapsed:.0f} images/s)")
            if monitor is not None and a.eval_every > 0 and ((step + 1) % a.eval_every == 0):
                entry["val_acc"] = accuracy(model, monitor[0], monitor[1], norm)
                msg += f" val_acc {entry['val_acc']:.4f}"
            log.append(entry)
            print(msg, file=sys.stderr, flush=True)
    return time.perf_counter() - t0, log, selected


# ---------------------------------------------------------------- driver

def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/fashion-mnist", help="folder of the Fashion-MNIST IDX files")
    p.add_argument("--labels-per-class", type=int, default=10)
    p.add_argument("--seed", type=int, default=0, help="label draw, initial weights, batches, views")
    p.add_argument("--draw", choices=["pretext", "numpy"], default="pretext",
                   help="pretext: the labelled images (and validation carving) pretext draws for --seed, by its "
                   "own generator (ChaCha8); numpy: a balanced draw of other images, by numpy's")
    p.add_argument("--eval-on", choices=["test", "validation"], default="test")
    p.add_argument("--test-limit", type=int, default=0, help="evaluate on at most this many images (0 = all)")
    p.add_argument("--pool-limit", type=int, default=0, help="a seeded sample of the pool (0 = all; for quick checks)")
    p.add_argument("--width", type=int, default=32)
    # finetune_* (the teacher)
    p.add_argument("--finetune-steps", type=int, default=300)
    p.add_argument("--finetune-batch", type=int, default=64)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--finetune-weight-decay", type=float, default=5e-4)
    p.add_argument("--crop-scale-min", type=float, default=0.8, help="finetune_crop_scale_min (the weak view)")
    p.add_argument("--no-flip", dest="flip", action="store_false")
    # semi_* (the student)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=32, help="labelled images per step (B)")
    p.add_argument("--ratio", type=int, default=7, help="unlabelled images per labelled one (mu)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--threshold", type=float, default=0.95, help="tau")
    p.add_argument("--fixed-thresholds", dest="adaptive", action="store_false", help="semi_adaptive = false (FixMatch)")
    p.add_argument("--threshold-warmup", action="store_true", help="semi_warmup = true")
    p.add_argument("--no-align", dest="align", action="store_false", help="semi_align = false")
    p.add_argument("--consistency", type=float, default=1.0, help="lambda_u")
    p.add_argument("--distill", type=float, default=0.0, help="lambda_d")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--init", choices=["teacher", "encoder"], default="teacher", help="semi_init")
    p.add_argument("--strong-ops", type=int, default=2)
    p.add_argument("--strong-magnitude", type=float, default=1.0)
    p.add_argument("--cutout", type=float, default=0.5)
    p.add_argument("--eval-every", type=int, default=250, help="validation accuracy every this many steps "
                   "(--eval-on validation only, on 2,000 validation images; 0 = never)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default="", help="also write the JSON here")
    p.add_argument("--smoke", action="store_true", help="a few steps on small sets (seconds)")
    a = p.parse_args()
    if a.smoke:
        a.finetune_steps, a.steps, a.test_limit, a.pool_limit, a.log_every = 20, 20, 1000, 5000, 10
    return a


def main():
    a = parse_args()
    t_start = time.perf_counter()
    torch.set_num_threads(a.threads)
    torch.set_num_interop_threads(1)
    data = a.data if os.path.isabs(a.data) or os.path.isdir(a.data) else os.path.join(os.path.dirname(HERE), a.data)
    train_x, train_y, test_x, test_y = load_fashion(data)
    stats = train_x[:INPUT_STATS_IMAGES].double()
    mean, std = stats.mean().item(), max(math.sqrt(max((stats ** 2).mean().item() - stats.mean().item() ** 2, 1e-8)), 1e-3)
    norm = lambda x: (x - mean) / std

    rng = np.random.default_rng(a.seed)
    labels = train_y.numpy()
    pool = np.arange(train_x.shape[0])
    eval_x, eval_y, evaluated_on = test_x, test_y, "test split"
    if a.eval_on == "validation":
        # split.rs: 10% of every class, a fixed carving (VALIDATION_SEED 1; labels.rs XORs 0x5eed_0ff5).
        seed = 1 ^ 0x5EED0FF5 if a.draw == "pretext" else 1
        rest, val = holdout_split(labels[pool], 0.1, shuffler(a.draw, seed))
        val, pool = pool[val], pool[rest]
        evaluated_on = f"validation: 10% of the training images ({a.draw} carving)"
        eval_x, eval_y = train_x[torch.from_numpy(val)], train_y[torch.from_numpy(val)]
    chosen = pool[balanced_subset(labels[pool], a.labels_per_class, shuffler(a.draw, a.seed))]
    draw = (f"pretext's draw for seed {a.seed} (labels.rs balanced_subset, ChaCha8)" if a.draw == "pretext"
            else f"balanced draw with numpy seed {a.seed}, not pretext's images")
    ev = sample_limit(np.arange(eval_x.shape[0]), a.test_limit, np.random.default_rng(a.seed ^ 0x07E575E7))
    eval_x, eval_y = eval_x[torch.from_numpy(ev)], eval_y[torch.from_numpy(ev)]
    pool = sample_limit(pool, a.pool_limit, np.random.default_rng(a.seed + 1))
    lab_x, lab_y = train_x[torch.from_numpy(chosen)], train_y[torch.from_numpy(chosen)]
    pool_x, pool_y = train_x[torch.from_numpy(pool)], train_y[torch.from_numpy(pool)]
    monitor = None
    if a.eval_on == "validation":
        mi = torch.from_numpy(sample_limit(np.arange(eval_x.shape[0]), MONITOR_IMAGES, np.random.default_rng(a.seed)))
        monitor = (eval_x[mi], eval_y[mi])
    print(f"{len(chosen)} labelled images ({draw}), pool {len(pool)}, evaluating on {eval_x.shape[0]} "
          f"({evaluated_on}); torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr, flush=True)

    # 1. The teacher: random weights seeded by --seed, fine-tuned on the labelled few.
    model = build(a.width, a.seed)
    initial = copy.deepcopy(model)
    t0 = time.perf_counter()
    train_teacher(model, lab_x, lab_y, norm, a, rng)
    finetune_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    teacher_logits = logits_on(model, pool_x, norm)
    pool_logits_s = time.perf_counter() - t1
    teacher_s = time.perf_counter() - t0
    teacher_acc = accuracy(model, eval_x, eval_y, norm)
    teacher_pool_acc = (teacher_logits.argmax(1) == pool_y).float().mean().item()
    print(f"teacher: accuracy {teacher_acc:.4f} ({finetune_s:.1f} s fine-tuning + {pool_logits_s:.1f} s pool logits)",
          file=sys.stderr, flush=True)

    # 2. The student, from the teacher (or the initial weights), then BN re-estimated on clean pool images.
    student = model if a.init == "teacher" else initial
    t2 = time.perf_counter()
    loop_s, log, selected = train_student(student, lab_x, lab_y, pool_x, pool_y, teacher_logits, norm, a, rng, monitor)
    t3 = time.perf_counter()
    before_bn_acc = accuracy(student, eval_x, eval_y, norm)  # a diagnostic, not timed
    t2 += time.perf_counter() - t3
    bn_idx = sample_limit(np.arange(pool_x.shape[0]), BN_IMAGES, np.random.default_rng(a.seed ^ 0xB4))
    reestimate_bn(student, pool_x[torch.from_numpy(bn_idx)], norm)
    student_s = time.perf_counter() - t2
    student_acc = accuracy(student, eval_x, eval_y, norm)
    per_step = a.batch_size * (1 + a.ratio)
    images_per_s = a.steps * per_step / loop_s

    out = {
        "reference": "bench/semi_reference.py", "mirrors": "pretext transfer --from scratch --protocol semi --set width=32",
        "labels_per_class": a.labels_per_class, "labelled": len(chosen), "labelled_draw": draw,
        "labelled_indices": chosen.tolist(), "pool": len(pool), "evaluated_on": evaluated_on,
        "eval_images": int(eval_x.shape[0]), "seed": a.seed, "width": a.width,
        "teacher_accuracy": teacher_acc, "student_accuracy": student_acc,
        "student_accuracy_before_bn_reestimation": before_bn_acc,
        "teacher_pool_accuracy": teacher_pool_acc,
        "teacher_s": teacher_s, "teacher_finetune_s": finetune_s, "teacher_pool_logits_s": pool_logits_s,
        "student_s": student_s, "student_loop_s": loop_s, "student_images_per_s": images_per_s,
        "steps": a.steps, "images_per_step": per_step, "finetune_steps": a.finetune_steps,
        "settings": {k: getattr(a, k) for k in ("batch_size", "ratio", "lr", "weight_decay", "threshold", "adaptive",
                                                "threshold_warmup", "align", "consistency", "distill", "temperature",
                                                "init", "strong_ops", "strong_magnitude", "cutout", "crop_scale_min",
                                                "flip", "finetune_batch", "finetune_lr", "finetune_weight_decay")},
        "confident_per_class": np.bincount(selected[selected >= 0], minlength=CLASSES).tolist(),
        "never_confident": int((selected < 0).sum()),
        "curve": log, "input_mean": mean, "input_std": std,
        "wall_s": time.perf_counter() - t_start, "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    print(f"semi-supervised stage from scratch, width-{a.width} convnet, {len(chosen)} labelled images "
          f"({a.labels_per_class} per class; {draw}), pool {len(pool)}, {a.steps} steps of "
          f"{a.batch_size} + {a.ratio * a.batch_size} images, torch {torch.__version__}, {out['threads']} threads")
    print(f"accuracy on {out['eval_images']} images ({evaluated_on}):")
    print(f"{'':<26} {'accuracy':>9} {'wall s':>9}")
    print(f"{'teacher (fine-tune)':<26} {teacher_acc:>9.4f} {teacher_s:>9.1f}   "
          f"({finetune_s:.1f} s fine-tuning + {pool_logits_s:.1f} s pool logits)")
    print(f"{'student (+ semi stage)':<26} {student_acc:>9.4f} {student_s:>9.1f}   "
          f"({loop_s:.1f} s loop, {images_per_s:.0f} images/s)")
    last = log[-1] if log else {}
    print(f"student before the batch-norm re-estimation: {before_bn_acc:.4f}")
    print(f"last {a.log_every} steps: mask {last.get('mask', float('nan')):.3f}, pseudo-label accuracy "
          f"{last.get('pseudo_acc', float('nan')):.3f}; confident per class {out['confident_per_class']}")
    print(f"wall {out['wall_s']:.1f} s")
    line = json.dumps(out)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
