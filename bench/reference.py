#!/usr/bin/env python3
"""PyTorch reference for `pretext bench`: the same backbones and rotation head, one training step
(forward, backward, AdamW) at the same shapes and precision (fp32), timed the same way.

Prints one JSON line: {"backbone", "params", "items_per_s", "peak_rss_mb", "torch", "threads"}.
Exits 3 with {"error": "torch not installed"} when PyTorch is missing."""
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


def cbr(c_in, c_out, stride=1):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class ConvNet(nn.Module):
    """src/nn/convnet.rs: four conv-BN-ReLU stages, 2x2 max-pool after the first three, GAP."""

    def __init__(self, c_in, width):
        super().__init__()
        w = [width, width * 2, width * 4, width * 8]
        self.stages = nn.ModuleList([cbr(c_in, w[0]), cbr(w[0], w[1]), cbr(w[1], w[2]), cbr(w[2], w[3])])
        self.dim = w[3]

    def forward(self, x):
        for i, s in enumerate(self.stages):
            x = s(x)
            if i < 3 and x.shape[2] >= 2 and x.shape[3] >= 2:
                x = F.max_pool2d(x, 2, 2)
        return x.mean(dim=(2, 3))


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
    """src/nn/resnet.rs: CIFAR-style, 3x3 stem, no max-pool, [2,2,2,2] basic blocks."""

    def __init__(self, c_in, width):
        super().__init__()
        self.stem = nn.Conv2d(c_in, width, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        blocks, c = [], width
        for i, w in enumerate([width, width * 2, width * 4, width * 8]):
            stride = 1 if i == 0 else 2
            blocks += [BasicBlock(c, w, stride), BasicBlock(w, w, 1)]
            c = w
        self.blocks = nn.Sequential(*blocks)
        self.dim = c

    def forward(self, x):
        return self.blocks(F.relu(self.stem_bn(self.stem(x)))).mean(dim=(2, 3))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--backbone", default="convnet")
    p.add_argument("--width", type=int, default=0)
    p.add_argument("--batch", type=int, default=128, help="inputs per step (after the 4 rotations)")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    a = p.parse_args()
    torch.manual_seed(0)
    if a.backbone == "convnet":
        enc = ConvNet(a.channels, a.width or 32)
    elif a.backbone == "resnet18":
        enc = ResNet18(a.channels, a.width or 64)
    else:
        sys.exit(f"unknown backbone {a.backbone}")
    model = nn.Sequential(enc, nn.Linear(enc.dim, 4)).to(a.device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=5e-4, eps=1e-5)
    x = torch.rand(a.batch, a.channels, a.size, a.size, device=a.device)
    y = torch.randint(0, 4, (a.batch,), device=a.device)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()  # read the loss every step, as pretext does

    for _ in range(a.warmup):
        step()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        step()
    dt = time.perf_counter() - t0
    # Parameters plus batch-norm running statistics, as burn's num_params counts them.
    params = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))
    print(json.dumps({
        "backbone": a.backbone,
        "params": params,
        "items_per_s": a.batch * a.steps / dt,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }))


if __name__ == "__main__":
    main()
