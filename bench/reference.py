#!/usr/bin/env python3
"""PyTorch reference for `pretext bench`: the same models as pretext's pretext tasks (src/nn/*.rs,
src/tasks/*.rs), trained one step at a time on the very batch pretext's own `make_batch` produced
(the bench child writes it to --batch-dir), at the same precision (fp32), with the same optimiser
(AdamW, lr 2e-3, weight decay 5e-4, eps 1e-5), loss and host read-backs, timed the same way
(median of --steps steps after 2 warm-up steps).

Prints one JSON line: {"task", "params", "items_per_s", "step_ms_median", "peak_rss_mb", "torch",
"threads", "device"}. Exits 3 with {"error": "torch not installed"} when PyTorch is missing.

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
        self.width = width

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
        self.width = width

    def stage_maps(self, x, stage=4):
        x = F.relu(self.stem_bn(self.stem(x)))
        maps = []
        for s in self.stages[:stage]:
            x = s(x)
            maps.append(x)
        return maps


def backbone(kind, c_in, width):
    return {"convnet": ConvNet, "resnet18": ResNet18}[kind](c_in, width)


def features(enc, x):
    """Backbone::features: the last stage, global average pooled: [b, dim]."""
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
    def __init__(self, kind, in_channels, width, out_channels, skips, stage=4):
        super().__init__()
        self.encoder = backbone(kind, in_channels, width)
        dims = [width << k for k in range(stage)]
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
    return torch.optim.AdamW(model.parameters(), lr=meta["lr"], weight_decay=meta["weight_decay"],
                             betas=(0.9, 0.999), eps=1e-5)


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
    enc = backbone(meta["backbone"], meta["c"], meta["width"])
    head = nn.Linear(enc.width * 8, 4)
    model = nn.ModuleDict({"enc": enc, "head": head}).to(d["device"])
    return classification(model, lambda x: head(features(enc, x)), d["images"], d["labels"], meta)


def context(d, meta):
    cfg = meta["task_config"]
    pairs, dim = cfg["pairs"], meta["width"] * 8
    enc = backbone(meta["backbone"], meta["c"], meta["width"])
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
    dim = meta["width"] * 8
    enc = backbone(meta["backbone"], meta["c"], meta["width"])
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
    gen = Generator(meta["backbone"], 1, meta["width"], q, cfg["skips"]).to(dev)
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
    gen = Generator(meta["backbone"], c, meta["width"], c, cfg["skips"]).to(dev)
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
    gen = Generator(meta["backbone"], c, meta["width"], c, cfg["skips"]).to(dev)
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


TASKS = {
    "rotation": rotation,
    "context": context,
    "jigsaw": jigsaw,
    "colorize": colorize,
    "superres": superres,
    "inpaint": inpaint,
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
