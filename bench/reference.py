#!/usr/bin/env python3
"""PyTorch reference for `pretext bench`: the same models as pretext's pretext tasks (src/nn/*.rs,
src/tasks/*.rs), trained one step at a time on the very batch pretext's own `make_batch` produced
(the bench child writes it to --batch-dir), at the same precision (fp32), with the same optimiser
(AdamW, lr 2e-3, weight decay 5e-4, eps 1e-5), loss and host read-backs, timed the same way
(median of --steps steps after 2 warm-up steps).

Prints one JSON line: {"task", "params", "items_per_s", "step_ms_median", "peak_rss_mb", "torch",
"threads", "device"}. Exits 3 with {"error": "torch not installed"} when PyTorch is missing.

Backbones: convnet, resnet18 (src/nn/convnet.rs, resnet.rs) and the vision transformers vit,
vit-small, vit-base (src/nn/vit.rs on src/nn/transformer.rs's block; patch side from meta["patch"]).

Adding a task is one step-builder function in TASKS: it gets the batch (a dict of tensors and the
metadata pretext wrote) and returns (list of modules, step function)."""
import argparse
import json
import os
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


# ---------------------------------------------------------------- backbones (src/nn/convnet.rs, resnet.rs)

def cbr(c_in, c_out, stride=1):
    """ConvBnRelu: 3x3 conv without bias, batch norm, ReLU."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class ConvNet(nn.Module):
    """Four conv-BN-ReLU stages, 2x2 max-pool after the first three (when the map is >= 2 px)."""

    def __init__(self, c_in, width):
        super().__init__()
        w = [width, width * 2, width * 4, width * 8]
        self.stages = nn.ModuleList([cbr(c_in, w[0]), cbr(w[0], w[1]), cbr(w[1], w[2]), cbr(w[2], w[3])])
        self.width, self.dim, self.n_stages = width, width * 8, 4

    def stage_dim(self, k):
        return self.width << (k - 1)

    def stage_maps(self, x, stage=4):
        maps = []
        for i, s in enumerate(self.stages[:stage]):
            x = s(x)
            if i < 3 and x.shape[2] >= 2 and x.shape[3] >= 2:
                x = F.max_pool2d(x, 2, 2)
            maps.append(x)
        return maps


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = None
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.shortcut(x) if self.shortcut is not None else x))


class ResNet18(nn.Module):
    """CIFAR-style: 3x3 stem, no max-pool, [2,2,2,2] basic blocks."""

    def __init__(self, c_in, width):
        super().__init__()
        self.stem = nn.Conv2d(c_in, width, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        stages, c = [], width
        for i, w in enumerate([width, width * 2, width * 4, width * 8]):
            stride = 1 if i == 0 else 2
            stages.append(nn.Sequential(BasicBlock(c, w, stride), BasicBlock(w, w, 1)))
            c = w
        self.stages = nn.ModuleList(stages)
        self.width, self.dim, self.n_stages = width, width * 8, 4

    def stage_dim(self, k):
        return self.width << (k - 1)

    def stage_maps(self, x, stage=4):
        x = F.relu(self.stem_bn(self.stem(x)))
        maps = []
        for s in self.stages[:stage]:
            x = s(x)
            maps.append(x)
        return maps


# ---------------------------------------------------------------- vision transformer (src/nn/vit.rs, transformer.rs)

def patchify(x, p):
    """vit.rs patchify: [b, c, h, w] (h, w multiples of p) → [b, (h/p)(w/p), p*p*c], the grid row
    by row, each patch's values ordered (row, column, channel)."""
    b, c, h, w = x.shape
    gh, gw = h // p, w // p
    return x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, p * p * c)


def unpatchify(t, p, c, grid):
    """vit.rs unpatchify, the inverse of patchify: [b, gh*gw, p*p*c] → [b, c, gh*p, gw*p]."""
    gh, gw = grid
    return t.reshape(t.shape[0], gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4).reshape(t.shape[0], c, gh * p, gw * p)


_SINCOS = {}


def sincos_2d(grid, d, device):
    """vit.rs sincos_2d: fixed positions [gh*gw, d], cell (y, x) row-major; the first d/2 values
    encode the column x, the last d/2 the row y, each as d/4 sines then d/4 cosines of pos*omega_i,
    omega_i = 10000^(-i/(d/4)) (computed in f64, stored f32)."""
    key = (tuple(grid), d, str(device))
    if key not in _SINCOS:
        gh, gw = grid
        q = d // 4
        omega = 1.0 / 10000.0 ** (torch.arange(q, dtype=torch.float64) / q)
        ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64),
                                indexing="ij")
        enc = lambda pos: torch.cat([torch.sin(pos[:, None] * omega), torch.cos(pos[:, None] * omega)], 1)
        pos = torch.cat([enc(xs.reshape(-1)), enc(ys.reshape(-1))], 1)
        _SINCOS[key] = pos.float().to(device)
    return _SINCOS[key]


def normal_linear(d_in, d_out, std):
    """LinearConfig::with_initializer(Normal { mean: 0, std }): burn draws the bias with the same
    initializer as the weight (burn-nn 0.22 linear.rs), so both are N(0, std) here too."""
    lin = nn.Linear(d_in, d_out)
    nn.init.normal_(lin.weight, 0.0, std)
    nn.init.normal_(lin.bias, 0.0, std)
    return lin


class Block(nn.Module):
    """transformer.rs Block::new / forward, bidirectional, no dropout: pre-LayerNorm (eps 1e-5),
    fused qkv reshaped [b, t, 3, heads, d/heads], scaled dot product (1/sqrt(d/heads)), exact
    GELU MLP; GPT-2 init, qkv and fc1 N(0, 0.02), proj and fc2 N(0, resid_std)."""

    def __init__(self, d, heads, d_ff, resid_std):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=1e-5), nn.LayerNorm(d, eps=1e-5)
        self.qkv, self.proj = normal_linear(d, 3 * d, 0.02), normal_linear(d, d, resid_std)
        self.fc1, self.fc2 = normal_linear(d, d_ff, 0.02), normal_linear(d_ff, d, resid_std)
        self.heads = heads

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        ctx = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(ctx.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Vit(nn.Module):
    """vit.rs Vit: patch embedding Linear(c*p*p, d) (PyTorch's default init = burn's default
    Kaiming-uniform), + fixed sine-cosine positions, `depth` blocks, final LayerNorm; features =
    mean of the final tokens. Sides that are not multiples of p are zero-padded bottom/right."""

    def __init__(self, c_in, dim, depth, heads, patch):
        super().__init__()
        resid_std = 0.02 / (2 * depth) ** 0.5
        self.embed = nn.Linear(c_in * patch * patch, dim)
        self.blocks = nn.ModuleList([Block(dim, heads, 4 * dim, resid_std) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.patch, self.dim, self.width, self.n_stages = patch, dim, dim, depth

    def stage_dim(self, k):
        return self.dim

    def tokens(self, x):
        """Vit::tokens: [b, c, h, w] → embedded patches + positions [b, gh*gw, d], and (gh, gw)."""
        p = self.patch
        h, w = x.shape[2], x.shape[3]
        ph, pw = -h % p, -w % p
        if ph + pw > 0:
            x = F.pad(x, (0, pw, 0, ph))
        grid = (x.shape[2] // p, x.shape[3] // p)
        return self.embed(patchify(x, p)) + sincos_2d(grid, self.dim, x.device), grid

    def run_blocks(self, t, upto):
        """Vit::blocks: blocks 1..=upto, the final LayerNorm when upto is the last block."""
        for blk in self.blocks[:upto]:
            t = blk(t)
        return self.norm(t) if upto == len(self.blocks) else t

    def encode(self, t):
        """Vit::encode: tokens [b, t, d] through every block and the final LayerNorm."""
        return self.run_blocks(t, len(self.blocks))

    def features_at(self, x, stage):
        return self.run_blocks(self.tokens(x)[0], stage).mean(1)

    def stage_maps(self, x, stage):
        """Vit::stage_maps: the tokens after blocks 1..=stage as maps [b, d, gh, gw] each."""
        t, (gh, gw) = self.tokens(x)
        maps = []
        for k in range(1, stage + 1):
            t = self.blocks[k - 1](t)
            shown = self.norm(t) if k == len(self.blocks) else t
            maps.append(shown.reshape(t.shape[0], gh, gw, self.dim).permute(0, 3, 1, 2))
        return maps


# BackboneKind::vit: (blocks, width of one head, default patch side).
VIT_PRESETS = {"vit": (6, 32, 4), "vit-small": (12, 64, 16), "vit-base": (12, 64, 16)}


def backbone(kind, c_in, width, patch=0):
    """BackboneSpec::init; `patch` 0 = the ViT preset's."""
    if kind in VIT_PRESETS:
        depth, head_dim, default_patch = VIT_PRESETS[kind]
        return Vit(c_in, width, depth, width // head_dim, patch or default_patch)
    return {"convnet": ConvNet, "resnet18": ResNet18}[kind](c_in, width)


def meta_backbone(meta, c_in):
    """The backbone batch.json names (kind, width, patch)."""
    return backbone(meta["backbone"], c_in, meta["width"], meta.get("patch", 0))


def features(enc, x):
    """Backbone::features: the last stage, global average pooled (a ViT: the mean of its
    final-normed tokens): [b, dim]."""
    if isinstance(enc, Vit):
        return enc.features_at(x, enc.n_stages)
    return enc.stage_maps(x)[-1].mean(dim=(2, 3))


def mlp(d_in, hidden, d_out):
    """MlpHead: Linear, ReLU, Linear."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


# ---------------------------------------------------------------- generator, discriminator (decoder.rs, discriminator.rs)

def upsample(x, size):
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class Decoder(nn.Module):
    def __init__(self, dims, in_channels, out_channels, skips):
        super().__init__()
        s, c, blocks = len(dims), dims[-1], []
        for j in reversed(range(s - 1)):
            blocks.append(cbr(c + (dims[j] if skips else 0), dims[j]))
            c = dims[j]
        blocks.reverse()
        self.blocks = nn.ModuleList(blocks)
        self.top = cbr(c + (in_channels if skips else 0), c)
        self.out = nn.Conv2d(c, out_channels, 3, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.skips = skips

    def forward(self, maps, x):
        y = maps[-1]
        for j in reversed(range(len(self.blocks))):
            skip = maps[j]
            y = upsample(y, skip.shape[2:])
            if self.skips:
                y = torch.cat([y, skip], 1)
            y = self.blocks[j](y)
        y = upsample(y, x.shape[2:])
        if self.skips:
            y = torch.cat([y, x], 1)
        return self.out(self.top(y))


class Generator(nn.Module):
    """decoder.rs Generator: the backbone's stage maps 1..=stage (0 = the last) into the decoder."""

    def __init__(self, meta, in_channels, out_channels, skips, stage=0):
        super().__init__()
        self.encoder = meta_backbone(meta, in_channels)
        stage = stage or self.encoder.n_stages
        dims = [self.encoder.stage_dim(k) for k in range(1, stage + 1)]
        self.decoder = Decoder(dims, in_channels, out_channels, skips)
        self.stage = stage

    def forward(self, x):
        return self.decoder(self.encoder.stage_maps(x, self.stage), x)


class Discriminator(nn.Module):
    def __init__(self, in_channels, width):
        super().__init__()
        w = [in_channels, width, width * 2, width * 4]
        self.convs = nn.ModuleList([nn.Conv2d(w[i], w[i + 1], 3, 2, 1) for i in range(3)])
        self.fc = nn.Linear(w[3], 1)

    def forward(self, x):
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
        return self.fc(x.mean(dim=(2, 3))).reshape(-1)


def bce_logits(logits, real):
    return F.softplus(-logits if real else logits).mean()


def centre(x):
    return (x - 0.5) * 2.0


def adamw(model, meta):
    """engine/optim.rs's default: decay on weight matrices and kernels, none on biases and norms
    (the 1-D parameters)."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": meta["weight_decay"]},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=meta["lr"], betas=(0.9, 0.999), eps=1e-5)


# ---------------------------------------------------------------- tasks: (modules, step) per task

def classification(model, forward, x, y, meta):
    """train/step.rs classification_step: CE loss, accuracy read back, loss read back."""
    opt = adamw(model, meta)

    def step():
        opt.zero_grad(set_to_none=True)
        logits = forward(x)
        loss = F.cross_entropy(logits, y)
        correct = (logits.detach().argmax(1) == y).sum().item()
        loss.backward()
        value = loss.item()
        opt.step()
        return value, correct

    return [model], step


def rotation(d, meta):
    enc = meta_backbone(meta, meta["c"])
    head = nn.Linear(enc.dim, 4)
    model = nn.ModuleDict({"enc": enc, "head": head}).to(d["device"])
    return classification(model, lambda x: head(features(enc, x)), d["images"], d["labels"], meta)


def context(d, meta):
    cfg = meta["task_config"]
    pairs = cfg["pairs"]
    enc = meta_backbone(meta, meta["c"])
    dim = enc.dim
    head = mlp(2 * dim, cfg["hidden"], 8)
    model = nn.ModuleDict({"enc": enc, "head": head}).to(d["device"])

    def forward(x):
        f = features(enc, x)
        n = f.shape[0] // (1 + pairs)
        f = f.reshape(n, 1 + pairs, dim)
        centre_ = f[:, :1].repeat(1, pairs, 1)
        both = torch.cat([centre_, f[:, 1:]], 2).reshape(n * pairs, 2 * dim)
        return head(both)

    return classification(model, forward, d["images"], d["labels"], meta)


def jigsaw(d, meta):
    cfg = meta["task_config"]
    enc = meta_backbone(meta, meta["c"])
    dim = enc.dim
    head = mlp(9 * dim, cfg["hidden"], cfg["permutations"])
    model = nn.ModuleDict({"enc": enc, "head": head}).to(d["device"])

    def forward(x):
        f = features(enc, x)
        return head(f.reshape(f.shape[0] // 9, 9 * dim))

    return classification(model, forward, d["images"], d["labels"], meta)


def colorize(d, meta):
    """tasks/colorize.rs, the default classification loss over the in-gamut ab bins, soft-encoded
    targets (k nearest bins) and class rebalancing recomputed from the running counts each step."""
    cfg, dev = meta["task_config"], d["device"]
    bins = torch.tensor(cfg["bins"], dtype=torch.float64, device=dev)
    q, k = bins.shape[0], cfg["neighbours"]
    b, h, w = meta["b"], meta["h"], meta["w"]
    plane = h * w
    gen = Generator(meta, 1, q, cfg["skips"], cfg.get("stage", 0)).to(dev)
    opt = adamw(gen, meta)
    x, extra, keep = d["images"], d["extra"], d["labels"].float()
    n = b * k * plane
    idx = extra[b * 2 * plane:b * 2 * plane + n].reshape(b, k, h, w).long()
    wts = extra[b * 2 * plane + n:].reshape(b, k, h, w)
    d2 = ((bins[:, None, :] - bins[None, :, :]) ** 2).sum(-1)
    counts = torch.zeros(q, dtype=torch.float64, device=dev)
    kept_pixels = max(keep.sum().item() * plane, 1.0)

    def step():
        nonlocal counts
        # Host-side bookkeeping of pretext's loss, done here as tensor ops.
        counts = counts + torch.bincount(idx[keep > 0, 0].reshape(-1), minlength=q).double()
        smooth = torch.exp(-d2 / (2.0 * cfg["prior_sigma"] ** 2)) @ counts
        s, lam = smooth.sum(), cfg["rebalance"]
        wq = 1.0 / ((1.0 - lam) * smooth / s + lam / q)
        rw = (wq / (smooth / s * wq).sum()).float()
        pix_w = rw[idx[:, 0:1]]
        opt.zero_grad(set_to_none=True)
        out = gen(x)
        logp = F.log_softmax(out, 1).gather(1, idx)
        per_pixel = -(logp * wts).sum(1, keepdim=True) * pix_w
        loss = (per_pixel * keep.reshape(b, 1, 1, 1)).sum() / kept_pixels
        loss.backward()
        value = loss.item()
        opt.step()
        return value

    return [gen], step


def gan_step(gen, disc, g_opt, d_opt, real, fake, content, adv_weight):
    """train/gan.rs: discriminator phase (fake detached), then generator phase (discriminator
    frozen), reading back the same numbers pretext logs."""
    b = real.shape[0]
    logits = disc(torch.cat([real, fake.detach()], 0))
    d_loss = bce_logits(logits[:b], True) + bce_logits(logits[b:], False)
    z = logits.detach().cpu()
    _ = ((z[:b] > 0).float().mean().item(), (z[b:] <= 0).float().mean().item())
    d_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    d_value = d_loss.item()
    d_opt.step()
    for p in disc.parameters():
        p.requires_grad_(False)
    adv = bce_logits(disc(fake), True) if adv_weight > 0 else None
    loss = content + adv * adv_weight if adv is not None else content
    g_opt.zero_grad(set_to_none=True)
    loss.backward()
    g_opt.step()
    for p in disc.parameters():
        p.requires_grad_(True)
    return content.item(), (adv.item() if adv is not None else 0.0), d_value


def normalizer(meta, dev):
    c = meta["c"]
    mean = torch.tensor(meta["mean"], device=dev).reshape(1, c, 1, 1)
    std = torch.tensor(meta["std"], device=dev).reshape(1, c, 1, 1)
    return lambda x: (x - mean) / std


def superres(d, meta):
    """tasks/superres.rs: residual generator on the bilinear upscale, L1 content loss, adversarial
    weight 1e-3 (steady state, past the content-only warm-up), PSNR numbers read back."""
    cfg, dev, c = meta["task_config"], d["device"], meta["c"]
    gen = Generator(meta, c, c, cfg["skips"], cfg.get("stage", 0)).to(dev)
    disc = Discriminator(c, cfg["d_width"]).to(dev)
    g_opt, d_opt = adamw(gen, meta), adamw(disc, meta)
    norm = normalizer(meta, dev)
    up, truth = d["images"], d["extra"].reshape(d["images"].shape)

    def step():
        out = up + gen(norm(up))
        _ = ((out.detach() - truth) ** 2).mean().item(), ((up - truth) ** 2).mean().item()
        content = (out - truth).abs().mean()
        return gan_step(gen, disc, g_opt, d_opt, centre(truth), centre(out), content, cfg["adv_weight"])

    return [gen, disc], step


def inpaint(d, meta):
    """tasks/inpaint.rs: sigmoid generator output pasted into the hole, weighted L2 (overlap
    border weighted), rec 0.999 + adversarial 0.001."""
    cfg, dev, c = meta["task_config"], d["device"], meta["c"]
    b, h, w = meta["b"], meta["h"], meta["w"]
    gen = Generator(meta, c, c, cfg["skips"], cfg.get("stage", 0)).to(dev)
    disc = Discriminator(c, cfg["d_width"]).to(dev)
    g_opt, d_opt = adamw(gen, meta), adamw(disc, meta)
    norm = normalizer(meta, dev)
    img = b * c * h * w
    masked, extra = d["images"], d["extra"]
    truth = extra[:img].reshape(b, c, h, w)
    hole = extra[img:img + b * h * w].reshape(b, 1, h, w)
    weights = extra[img + b * h * w:].reshape(b, 1, h, w)

    def step():
        pred = torch.sigmoid(gen(norm(masked)))
        filled = masked * (1.0 - hole) + pred * hole
        rec = ((pred - truth) ** 2 * weights).sum() / (weights.sum() * c + 1e-8)
        return gan_step(gen, disc, g_opt, d_opt, centre(truth), centre(filled),
                        rec * cfg["rec_weight"], cfg["adv_weight"])

    return [gen, disc], step


# ---------------------------------------------------------------- masked autoencoder (src/tasks/mae.rs)

class MaeDecoder(nn.Module):
    """mae.rs MaeDecoder: Linear(enc d, dd) on the encoded visible patches, a learned mask token
    (N(0, 0.02)) at every hidden one, un-shuffled to patch order by `restore`, + sine-cosine
    positions of width dd, `depth` blocks (heads dd/32, MLP 4*dd), LayerNorm, Linear(dd, p*p*c)."""

    def __init__(self, enc_dim, dim, depth, pixels):
        super().__init__()
        resid_std = 0.02 / (2 * max(depth, 1)) ** 0.5
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.blocks = nn.ModuleList([Block(dim, max(dim // 32, 1), 4 * dim, resid_std) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-5)
        self.pred = nn.Linear(dim, pixels)
        self.dim = dim

    def forward(self, latent, restore, grid):
        """latent [b, k, enc d]; restore [b*n]: each patch's row in its image's [visible...,
        hidden...] sequence, offset by image*n → predicted pixels [b, n, p*p*c]."""
        b, k, _ = latent.shape
        n, d = grid[0] * grid[1], self.dim
        hidden = self.mask_token.expand(b, n - k, d)
        x = torch.cat([self.embed(latent), hidden], 1).reshape(b * n, d).index_select(0, restore).reshape(b, n, d)
        x = x + sincos_2d(grid, d, x.device)
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))


def mae_forward(enc, dec, x, keep, restore):
    """MaeModel::forward: all n tokens embedded (+ positions), the k visible ones per image picked
    by `keep` (image*n + patch), encoded alone, then decoded → [b, n, p*p*c]."""
    tokens, grid = enc.tokens(x)
    b, n, d = tokens.shape
    k = keep.numel() // b
    visible = tokens.reshape(b * n, d).index_select(0, keep).reshape(b, k, d)
    return dec(enc.encode(visible), restore, grid)


def norm_patches(t):
    """mae.rs norm_patches: each patch standardised by its own mean and unbiased variance (+1e-6)."""
    mean = t.mean(2, keepdim=True)
    var = t.var(2, keepdim=True, unbiased=True)
    return (t - mean) / (var + 1e-6).sqrt()


def masked_loss(pred, target, mask, norm_pix):
    """mae.rs masked_loss: per-patch mean squared error [b, n], summed over the hidden patches
    (mask 1) / their number."""
    if norm_pix:
        target = norm_patches(target)
    per_patch = ((pred - target) ** 2).mean(2)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def decoder_width(cfg, enc_dim):
    """decoder_width 0 = half the encoder's, at least 32."""
    return cfg["decoder_width"] or max(enc_dim // 2, 32)


def mae_layout(extra, b, n):
    """Mae::flat's extra = [keep (b*k) | restore (b*n) | mask (b*n)] as f32 → keep, restore
    (int64) and mask [b, n]."""
    k = (extra.numel() - 2 * b * n) // b
    assert extra.numel() == b * k + 2 * b * n and 0 < k < n, "extra is not [keep | restore | mask]"
    keep = extra[:b * k].long()
    restore = extra[b * k:b * k + b * n].long()
    mask = extra[b * k + b * n:].reshape(b, n)
    assert int(mask[0].sum().item()) == n - k, "keep and mask disagree on k"
    return keep, restore, mask


def mae(d, meta):
    """tasks/mae.rs: ViT encoder on the visible patches only (the batch's own keep/restore/mask),
    light decoder predicting every patch, MSE on the hidden patches against the norm-pix targets
    of the (normalised) input; AdamW as every task here."""
    cfg, dev, c = meta["task_config"], d["device"], meta["c"]
    b, h, w = meta["b"], meta["h"], meta["w"]
    enc = meta_backbone(meta, c)
    if not isinstance(enc, Vit):
        sys.exit("mae needs a vision transformer backbone (vit, vit-small, vit-base)")
    p = enc.patch
    keep, restore, mask = mae_layout(d["extra"], b, (h // p) * (w // p))
    dec = MaeDecoder(enc.dim, decoder_width(cfg, enc.dim), cfg["decoder_depth"], p * p * c)
    model = nn.ModuleDict({"enc": enc, "dec": dec}).to(dev)
    opt = adamw(model, meta)
    x = d["images"]

    def step():
        opt.zero_grad(set_to_none=True)
        loss = masked_loss(mae_forward(enc, dec, x, keep, restore), patchify(x, p), mask, cfg["norm_pix_loss"])
        loss.backward()
        value = loss.item()
        opt.step()
        return value

    return [model], step


TASKS = {
    "rotation": rotation,
    "context": context,
    "jigsaw": jigsaw,
    "colorize": colorize,
    "superres": superres,
    "inpaint": inpaint,
    "mae": mae,
}


# ---------------------------------------------------------------- driver

def load_batch(folder, device):
    with open(os.path.join(folder, "batch.json")) as f:
        meta = json.load(f)

    def raw(name, dtype):
        with open(os.path.join(folder, name), "rb") as f:
            data = bytearray(f.read())
        return torch.frombuffer(data, dtype=dtype) if data else torch.zeros(0, dtype=dtype)

    d = {
        "device": device,
        "images": raw("images.f32", torch.float32).reshape(meta["b"], meta["c"], meta["h"], meta["w"]).to(device),
        "labels": raw("labels.u32", torch.int32).long().to(device),
        "extra": raw("extra.f32", torch.float32).to(device),
    }
    return meta, d


def cpu_seconds():
    u = resource.getrusage(resource.RUSAGE_SELF)
    return u.ru_utime + u.ru_stime


def count_params(modules):
    """Parameters plus batch-norm running statistics, as burn's num_params counts them."""
    return sum(sum(p.numel() for p in m.parameters())
               + sum(b.numel() for n, b in m.named_buffers() if not n.endswith("num_batches_tracked"))
               for m in modules)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch-dir", required=True, help="folder the pretext bench child wrote")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    meta, d = load_batch(a.batch_dir, a.device)
    if meta["task"] not in TASKS:
        sys.exit(f"no PyTorch reference for task {meta['task']}")
    modules, step = TASKS[meta["task"]](d, meta)
    for m in modules:
        m.train()
    for _ in range(a.warmup):
        step()
    times = []
    cpu0 = cpu_seconds()
    for _ in range(a.steps):
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if a.device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    cpu_ms = (cpu_seconds() - cpu0) * 1e3 / max(a.steps, 1)
    times.sort()
    n = len(times)
    median = times[n // 2] if n % 2 else (times[n // 2 - 1] + times[n // 2]) / 2
    out = {
        "task": meta["task"],
        "params": count_params(modules),
        "items_per_s": meta["images_per_step"] / median,
        "step_ms_median": median * 1e3,
        "step_ms_mean": sum(times) / n * 1e3,
        "cpu_ms_per_step": cpu_ms,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": a.device,
    }
    if a.device.startswith("cuda"):
        out["peak_device_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(out))


if __name__ == "__main__":
    main()
