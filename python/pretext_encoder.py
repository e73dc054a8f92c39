"""pretext's image encoders in PyTorch, and a loader for `pretext export --format torch`.

    import sys; sys.path.insert(0, "encoder")      # the exported directory holds a copy
    import pretext_encoder
    model = pretext_encoder.load("encoder")        # eval mode, on the CPU
    features = model(x)                            # x: float [batch, C, H, W], pixels / 255

`model.backbone` is the bare network (input already normalised), for fine-tuning;
`model.normalize(x)` is (x - mean) / std with the run's statistics; `model.config` is
config.json (architecture, preprocessing, task, data, steps).

The architectures are those of pretext's src/nn (convnet.rs, resnet.rs), layer for layer, so
the features equal `pretext embed`'s to float precision:

- convnet: 4 stages of conv 3x3 (padding 1, no bias) -> batch norm -> ReLU, widths
  w, 2w, 4w, 8w; 2x2 max-pooling (stride 2) after each of the first three while the map is at
  least 2x2; global average pooling.
- resnet18 (CIFAR-style, torchvision's parameter names): conv 3x3 stem -> BN -> ReLU, no max
  pooling; layer1..layer4 of two basic blocks (strides 1, 2, 2, 2; a 1x1 conv + BN
  `downsample` where the shape changes); global average pooling.

Only torch is needed: the safetensors file is read here (its format is an 8-byte length, a JSON
header, then the raw little-endian tensors).
"""

import json
import os
import struct

import torch
from torch import nn
import torch.nn.functional as F

BN_EPS = 1e-5


class ConvBnRelu(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPS)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


class ConvNet(nn.Module):
    stages_count = 4

    def __init__(self, in_channels, width):
        super().__init__()
        w = [width, width * 2, width * 4, width * 8]
        self.stages = nn.ModuleList(
            [ConvBnRelu(c_in, c_out) for c_in, c_out in zip([in_channels] + w[:3], w)]
        )
        self.pool = nn.MaxPool2d(2, 2)
        self.dim = w[3]

    def forward_to(self, x, stage):
        """x: [b, in_channels, h, w] -> feature map of `stage` (1..4), before pooling."""
        for i, block in enumerate(self.stages[:stage]):
            x = block(x)
            if i < 3 and x.shape[2] >= 2 and x.shape[3] >= 2:
                x = self.pool(x)
        return x


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                nn.BatchNorm2d(c_out, eps=BN_EPS),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        skip = x if self.downsample is None else self.downsample(x)
        return F.relu(out + skip)


class ResNet18(nn.Module):
    stages_count = 4

    def __init__(self, in_channels, width):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width, eps=BN_EPS)
        c_in = width
        for i, c in enumerate([width, width * 2, width * 4, width * 8]):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(BasicBlock(c_in, c, stride), BasicBlock(c, c, 1))
            setattr(self, "layer%d" % (i + 1), layer)
            c_in = c
        self.dim = width * 8

    def forward_to(self, x, stage):
        """x: [b, in_channels, h, w] -> feature map after `stage` (1..4), before pooling."""
        x = F.relu(self.bn1(self.conv1(x)))
        for i in range(stage):
            x = getattr(self, "layer%d" % (i + 1))(x)
        return x


ARCHITECTURES = {"convnet": ConvNet, "resnet18": ResNet18}


class Encoder(nn.Module):
    """Normalisation + backbone + global average pooling: pixels / 255 in, features out."""

    def __init__(self, config):
        super().__init__()
        arch = config["architecture"]
        pre = config["preprocessing"]
        self.config = config
        self.backbone = ARCHITECTURES[arch["name"]](arch["in_channels"], arch["width"])
        c = pre["input_shape"][0]
        self.register_buffer("mean", torch.tensor(pre["mean"], dtype=torch.float32).view(1, c, 1, 1))
        self.register_buffer("std", torch.tensor(pre["std"], dtype=torch.float32).view(1, c, 1, 1))

    def normalize(self, x):
        if self.config["preprocessing"].get("per_image", False):
            # Each image standardised on its own (a jigsaw encoder), std floored at 0.02.
            m = x.mean(dim=(1, 2, 3), keepdim=True)
            s = (x - m).pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(0.02)
            return (x - m) / s
        return (x - self.mean) / self.std

    def features_at(self, x, stage):
        """x: pixels / 255 [b, C, H, W] -> pooled output of `stage` [b, stage width]."""
        return self.backbone.forward_to(self.normalize(x), stage).mean(dim=(2, 3))

    def forward(self, x):
        """x: pixels / 255 [b, C, H, W] -> features [b, dim] (the last stage, pooled)."""
        return self.features_at(x, self.backbone.stages_count)


_DTYPES = {"F32": torch.float32, "F64": torch.float64, "F16": torch.float16,
           "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32}


def read_safetensors(path):
    """A state dict from a .safetensors file (name -> tensor)."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = memoryview(data)[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        start, end = t["data_offsets"]
        raw = bytearray(body[start:end])
        tensor = torch.frombuffer(raw, dtype=_DTYPES[t["dtype"]]) if raw else \
            torch.zeros(0, dtype=_DTYPES[t["dtype"]])
        out[name] = tensor.reshape(t["shape"]).clone()
    return out


def load(path):
    """The encoder exported to directory `path`, in eval mode."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    model = Encoder(config)
    state = read_safetensors(os.path.join(path, config.get("weights") or "model.safetensors"))
    model.backbone.load_state_dict(state, strict=True)
    return model.eval()
