"""pretext's encoders in PyTorch, and a loader for `pretext export --format torch`.

    import sys; sys.path.insert(0, "encoder")      # the exported directory holds a copy
    import pretext_encoder
    model = pretext_encoder.load("encoder")        # eval mode, on the CPU
    features = model(x)                            # x: float [batch, C, H, W], pixels / 255

A text run's export loads as a `TextEncoder` (see its docstring): `model(input_ids,
attention_mask)` -> [batch, d_model], the mean of the final hidden states over the tokens, as
`pretext embed` writes it; `model.batch(token_lists)` pads token id lists as embed does, and
`model.embed(texts)` tokenizes too when the `tokenizers` package is installed.

`model.backbone` is the bare network (input already normalised), for fine-tuning;
`model.normalize(x)` is (x - mean) / std with the run's statistics; `model.config` is
config.json (architecture, preprocessing, task, data, steps).

The architectures are those of pretext's src/nn (convnet.rs, resnet.rs, vit.rs), layer for
layer, so the features equal `pretext embed`'s to float precision:

- convnet: 4 stages of conv 3x3 (padding 1, no bias) -> batch norm -> ReLU, widths
  w, 2w, 4w, 8w; 2x2 max-pooling (stride 2) after each of the first three while the map is at
  least 2x2; global average pooling.
- resnet18 (CIFAR-style, torchvision's parameter names): conv 3x3 stem -> BN -> ReLU, no max
  pooling; layer1..layer4 of two basic blocks (strides 1, 2, 2, 2; a 1x1 conv + BN
  `downsample` where the shape changes); global average pooling.

- vit, vit-small, vit-base (src/nn/vit.rs): the image zero-padded at the bottom/right to
  multiples of the patch side p, cut into p x p patches (the grid row by row, each patch's
  values ordered row, column, channel), each embedded by a Linear `embed`, plus fixed 2-D
  sine-cosine positions; `depth` blocks of the text transformer's kind (below, every token
  attending to every token), a final LayerNorm `norm`; the features are the mean of the final
  tokens. `features_at(x, k)` is the mean of the tokens after block k (the last: after `norm`).
- transformer (text runs; src/nn/transformer.rs): token + learned position embeddings, blocks of
  x + proj(attention(LN1(x))), x + fc2(GELU(fc1(LN2(x)))) (exact erf GELU, LayerNorm eps 1e-5),
  a final LayerNorm, mean pooling over the tokens.

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


class TextBlock(nn.Module):
    """One pre-LayerNorm transformer block (src/nn/transformer.rs `Block`; a ViT's blocks too)."""

    def __init__(self, d_model, heads, d_ff, eps):
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d_model, eps=eps)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model, eps=eps)
        self.fc1 = nn.Linear(d_model, d_ff)
        self.fc2 = nn.Linear(d_ff, d_model)

    def forward(self, x, hidden=None):
        """x: [b, t, d]; hidden: bool [b or 1, 1, t, t], True where a query may not attend
        (None: every token sees every token)."""
        b, t, d = x.shape
        h = self.heads
        qkv = self.qkv(self.ln1(x)).view(b, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        scores = (q @ k.transpose(-1, -2)) * (d // h) ** -0.5
        if hidden is not None:
            # A large finite value, not -inf: a row with no token gives no NaN.
            scores = scores.masked_fill(hidden, -1e9)
        context = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, t, d)
        x = x + self.proj(context)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))  # F.gelu: the exact (erf) GELU


def patchify(x, p):
    """x: [b, c, h, w] (h, w multiples of p) -> patches [b, (h/p)(w/p), p*p*c], the grid row by
    row, each patch's values ordered (row, column, channel)."""
    b, c, h, w = x.shape
    gh, gw = h // p, w // p
    # [b, c, gh, p, gw, p] -> [b, gh, gw, p, p, c]
    return x.reshape(b, c, gh, p, gw, p).permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, p * p * c)


def sincos_2d(grid, d):
    """Fixed positions [gh*gw, d], cell (y, x) row-major: the first d/2 values encode the column
    x, the last d/2 the row y, each as d/4 sines then d/4 cosines of pos*omega_i,
    omega_i = 10000^(-i/(d/4)) (computed in float64, returned float32)."""
    gh, gw = grid
    q = d // 4
    omega = 1.0 / 10000.0 ** (torch.arange(q, dtype=torch.float64) / q)
    ys, xs = torch.meshgrid(torch.arange(gh, dtype=torch.float64),
                            torch.arange(gw, dtype=torch.float64), indexing="ij")

    def enc(pos):
        return torch.cat([torch.sin(pos[:, None] * omega), torch.cos(pos[:, None] * omega)], 1)

    return torch.cat([enc(xs.reshape(-1)), enc(ys.reshape(-1))], 1).float()


class Vit(nn.Module):
    """src/nn/vit.rs `Vit`: patch embedding, fixed sine-cosine positions, `depth` blocks, a
    final LayerNorm. Any image size: the positions are computed for the grid at hand."""

    def __init__(self, in_channels, width, depth, heads, patch, eps=1e-5):
        super().__init__()
        self.patch = patch
        self.dim = width
        self.stages_count = depth
        self.embed = nn.Linear(in_channels * patch * patch, width)
        self.blocks = nn.ModuleList([TextBlock(width, heads, 4 * width, eps) for _ in range(depth)])
        self.norm = nn.LayerNorm(width, eps=eps)

    def tokens(self, x):
        """x: [b, c, h, w] -> embedded patches + positions [b, gh*gw, d], and (gh, gw)."""
        p = self.patch
        h, w = x.shape[2], x.shape[3]
        ph, pw = -h % p, -w % p
        if ph + pw > 0:
            x = F.pad(x, (0, pw, 0, ph))  # zeros at the right and the bottom
        grid = (x.shape[2] // p, x.shape[3] // p)
        pos = sincos_2d(grid, self.dim).to(device=x.device, dtype=x.dtype)
        return self.embed(patchify(x, p)) + pos, grid

    def features_at(self, x, stage):
        """x: [b, c, h, w] (normalised) -> mean of the tokens after block `stage` (1..depth;
        the last after the final LayerNorm) [b, width]."""
        t, _ = self.tokens(x)
        for block in self.blocks[:stage]:
            t = block(t)
        if stage == len(self.blocks):
            t = self.norm(t)
        return t.mean(dim=1)


ARCHITECTURES = {"convnet": ConvNet, "resnet18": ResNet18}
VITS = ("vit", "vit-small", "vit-base")


def backbone(arch):
    """The bare network config["architecture"] describes."""
    if arch["name"] in VITS:
        return Vit(arch["in_channels"], arch["width"], arch["depth"], arch["heads"], arch["patch"],
                   arch.get("layer_norm_eps", 1e-5))
    return ARCHITECTURES[arch["name"]](arch["in_channels"], arch["width"])


class Encoder(nn.Module):
    """Normalisation + backbone + global average pooling (a ViT: the mean of its tokens):
    pixels / 255 in, features out."""

    def __init__(self, config):
        super().__init__()
        arch = config["architecture"]
        pre = config["preprocessing"]
        self.config = config
        self.backbone = backbone(arch)
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
        """x: pixels / 255 [b, C, H, W] -> pooled output of `stage` [b, stage width] (a ViT:
        the mean of its tokens after block `stage`)."""
        if isinstance(self.backbone, Vit):
            return self.backbone.features_at(self.normalize(x), stage)
        return self.backbone.forward_to(self.normalize(x), stage).mean(dim=(2, 3))

    def forward(self, x):
        """x: pixels / 255 [b, C, H, W] -> features [b, dim] (the last stage, pooled)."""
        return self.features_at(x, self.backbone.stages_count)


class TextEncoder(nn.Module):
    """A text run's transformer as `pretext embed` uses it: token ids in, one vector out.

    forward(input_ids, attention_mask=None): int64 [b, t] (t <= max_len, padded on the right),
    attention_mask 1 = token, 0 = padding (default: all tokens) -> float [b, d_model], the mean
    of the final hidden states over the tokens. A padding position is hidden from every query;
    a causal-lm run's queries also see no later position. `hidden(...)` gives the states
    [b, t, d_model] before pooling.

    config["tokenization"] says how embed tokenizes: the tokenizer file beside the weights
    (Hugging Face tokenizer.json) without special tokens added, the first max_len tokens of a
    longer document, [eos] for an empty one.
    """

    def __init__(self, config):
        super().__init__()
        a = config["architecture"]
        self.config = config
        self.causal = a["causal"]
        self.max_len = a["max_len"]
        eps = a.get("layer_norm_eps", 1e-5)
        self.tok = nn.Embedding(a["vocab"], a["d_model"])
        self.pos = nn.Embedding(a["max_len"], a["d_model"])
        self.blocks = nn.ModuleList(
            [TextBlock(a["d_model"], a["heads"], a["d_ff"], eps) for _ in range(a["layers"])]
        )
        self.ln_f = nn.LayerNorm(a["d_model"], eps=eps)
        self.dim = a["d_model"]
        self._tokenizer = None
        self.directory = None

    def hidden(self, input_ids, attention_mask=None):
        b, t = input_ids.shape
        if t > self.max_len:
            raise ValueError("sequence of %d tokens > max_len %d" % (t, self.max_len))
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = torch.arange(t, device=input_ids.device)
        x = self.tok(input_ids) + self.pos(positions)
        hidden = (attention_mask == 0).view(b, 1, 1, t)
        if self.causal:
            future = positions.view(1, t) > positions.view(t, 1)
            hidden = hidden | future.view(1, 1, t, t)
        for block in self.blocks:
            x = block(x, hidden)
        return self.ln_f(x)

    def forward(self, input_ids, attention_mask=None):
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        m = attention_mask.to(self.ln_f.weight.dtype).unsqueeze(-1)
        return (self.hidden(input_ids, attention_mask) * m).sum(dim=1) / m.sum(dim=1).clamp_min(1)

    def batch(self, docs):
        """Token id lists -> (input_ids, attention_mask) as embed makes them: each cut to its
        first max_len ids, an empty one [eos], padded on the right with pad."""
        t = self.config["tokenization"]
        docs = [list(d)[: self.max_len] or [t["eos_id"]] for d in docs]
        n = max(len(d) for d in docs)
        ids = torch.full((len(docs), n), t["pad_id"], dtype=torch.int64)
        mask = torch.zeros((len(docs), n), dtype=torch.int64)
        for r, d in enumerate(docs):
            ids[r, : len(d)] = torch.tensor(d, dtype=torch.int64)
            mask[r, : len(d)] = 1
        return ids, mask

    def tokenizer(self):
        """The exported tokenizer (needs the `tokenizers` package)."""
        if self._tokenizer is None:
            from tokenizers import Tokenizer
            name = self.config["tokenization"]["tokenizer"]
            self._tokenizer = Tokenizer.from_file(os.path.join(self.directory, name))
        return self._tokenizer

    def embed(self, texts):
        """Texts -> float [len(texts), d_model], as `pretext embed` (needs `tokenizers`)."""
        tok = self.tokenizer()
        ids = [tok.encode(s, add_special_tokens=False).ids for s in texts]
        with torch.no_grad():
            return self(*self.batch(ids))


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
    """The encoder exported to directory `path`, in eval mode: an `Encoder` (image runs) or a
    `TextEncoder` (text runs)."""
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    state = read_safetensors(os.path.join(path, config.get("weights") or "model.safetensors"))
    if config["architecture"]["name"] == "transformer":
        model = TextEncoder(config)
        model.directory = path
        model.load_state_dict(state, strict=True)
        return model.eval()
    model = Encoder(config)
    model.backbone.load_state_dict(state, strict=True)
    return model.eval()
