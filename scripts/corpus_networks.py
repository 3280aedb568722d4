"""The benchmark corpus' architectures (torch modules), exported by export_corpus.py.

Each stands for a graph shape graph optimizers must handle: Conv+BatchNorm, depthwise
inverted residuals, a YOLO-style head with Concat outputs, attention with a mask,
recurrent ops, If/Loop control flow, a ConvTranspose decoder. torch is used in scripts/ only.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F


def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.a = conv_bn(cin, cout, 3, stride)
        self.b = conv_bn(cout, cout, 3, 1)
        self.skip = conv_bn(cin, cout, 1, stride) if (stride != 1 or cin != cout) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.b(F.relu(self.a(x))) + self.skip(x))


class ResNetMini(nn.Module):
    """ResNet-18 layout at a quarter width: stem, 4 stages of basic blocks, pool, fc."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 7, 2), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
        widths = [16, 32, 64, 128]
        blocks, cin = [], 16
        for i, w in enumerate(widths):
            blocks += [BasicBlock(cin, w, 1 if i == 0 else 2), BasicBlock(w, w, 1)]
            cin = w
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(cin, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class InvertedResidual(nn.Module):
    def __init__(
        self, cin: int, cout: int, stride: int, expand: int, act: type[nn.Module], se: bool
    ):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [conv_bn(cin, hidden, 1), act()]
        layers += [conv_bn(hidden, hidden, 3, stride, groups=hidden), act()]
        self.body = nn.Sequential(*layers)
        self.se = (
            nn.Sequential(
                nn.AdaptiveAvgPool2d(1),
                nn.Conv2d(hidden, max(hidden // 4, 8), 1),
                nn.ReLU(),
                nn.Conv2d(max(hidden // 4, 8), hidden, 1),
                nn.Hardsigmoid(),
            )
            if se
            else None
        )
        self.project = conv_bn(hidden, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        if self.se is not None:
            y = y * self.se(y)
        y = self.project(y)
        return x + y if self.use_res else y


class MobileNetMini(nn.Module):
    """MobileNetV2/V3 mix: depthwise blocks, ReLU6 and Hardswish, squeeze-excite, classifier."""

    def __init__(self, classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), nn.Hardswish())
        cfg = [
            (16, 16, 1, 1, nn.ReLU6, False),
            (16, 24, 2, 4, nn.ReLU6, False),
            (24, 24, 1, 4, nn.ReLU6, False),
            (24, 40, 2, 4, nn.Hardswish, True),
            (40, 40, 1, 4, nn.Hardswish, True),
            (40, 64, 2, 4, nn.Hardswish, True),
        ]
        self.blocks = nn.Sequential(*[InvertedResidual(*c) for c in cfg])
        self.head = nn.Sequential(conv_bn(64, 128, 1), nn.Hardswish())
        self.classifier = nn.Sequential(
            nn.Linear(128, 64), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(64, classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(x.mean((2, 3)))


class ConvBnSiLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1):
        super().__init__()
        self.conv = conv_bn(cin, cout, k, s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.conv(x))


class YoloMini(nn.Module):
    """YOLOv5-like: CSP-ish backbone, upsample+concat neck, 3 heads decoded into (boxes, scores)."""

    def __init__(self, classes: int = 8, anchors: int = 3):
        super().__init__()
        self.classes, self.anchors = classes, anchors
        self.b1 = nn.Sequential(
            ConvBnSiLU(3, 16, 3, 2), ConvBnSiLU(16, 32, 3, 2), ConvBnSiLU(32, 32)
        )
        self.b2 = nn.Sequential(ConvBnSiLU(32, 64, 3, 2), ConvBnSiLU(64, 64))
        self.b3 = nn.Sequential(ConvBnSiLU(64, 128, 3, 2), ConvBnSiLU(128, 128))
        self.lat3 = ConvBnSiLU(128, 64, 1)
        self.fuse2 = ConvBnSiLU(128, 64)
        self.lat2 = ConvBnSiLU(64, 32, 1)
        self.fuse1 = ConvBnSiLU(64, 32)
        self.heads = nn.ModuleList(nn.Conv2d(c, anchors * (5 + classes), 1) for c in (32, 64, 128))
        self.strides = (8, 16, 32)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        p1 = self.b1(x)
        p2 = self.b2(p1)
        p3 = self.b3(p2)
        u3 = self.lat3(p3)
        n2 = self.fuse2(torch.cat([F.interpolate(u3, scale_factor=2.0, mode="nearest"), p2], 1))
        u2 = self.lat2(n2)
        n1 = self.fuse1(torch.cat([F.interpolate(u2, scale_factor=2.0, mode="nearest"), p1], 1))
        boxes, scores = [], []
        for feature, head, stride in zip((n1, n2, p3), self.heads, self.strides, strict=False):
            b, _, h, w = feature.shape
            y = (
                head(feature)
                .view(b, self.anchors, 5 + self.classes, h, w)
                .permute(0, 1, 3, 4, 2)
                .sigmoid()
            )
            gy, gx = torch.meshgrid(
                torch.arange(h, dtype=torch.float32),
                torch.arange(w, dtype=torch.float32),
                indexing="ij",
            )
            grid = torch.stack((gx, gy), -1).view(1, 1, h, w, 2)
            xy = (y[..., :2] * 2 - 0.5 + grid) * stride
            wh = (y[..., 2:4] * 2) ** 2 * stride
            boxes.append(torch.cat([xy - wh / 2, xy + wh / 2], -1).reshape(b, -1, 4))
            scores.append((y[..., 5:] * y[..., 4:5]).reshape(b, -1, self.classes))
        return torch.cat(boxes, 1), torch.cat(scores, 1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape

        def split(z: torch.Tensor) -> torch.Tensor:
            return z.view(b, t, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim) + bias
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d)
        return self.o(context)


class HandLayerNorm(nn.Module):
    """LayerNorm written out, as many research repositories do."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight, self.bias, self.eps = (
            nn.Parameter(1 + 0.1 * torch.randn(dim)),
            nn.Parameter(0.1 * torch.randn(dim)),
            eps,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = (x - mean).pow(2).mean(-1, keepdim=True)
        return self.weight * (x - mean) / torch.sqrt(var + self.eps) + self.bias


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's GELU, written out."""
    return (
        0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))
    )


def erf_gelu(x: torch.Tensor) -> torch.Tensor:
    """BERT's original GELU, written out."""
    return x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


class EncoderLayer(nn.Module):
    def __init__(
        self, dim: int, heads: int, hand_written: bool, gelu: Callable[[torch.Tensor], torch.Tensor]
    ):
        super().__init__()
        norm = HandLayerNorm if hand_written else nn.LayerNorm
        self.attn, self.n1, self.n2 = Attention(dim, heads), norm(dim), norm(dim)
        self.f1, self.f2, self.gelu = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim), gelu

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = self.n1(x + self.attn(x, bias))
        return self.n2(x + self.f2(self.gelu(self.f1(x))))


class TransformerEncoder(nn.Module):
    """BERT-like encoder: token+position embeddings, additive attention mask, mean pooling."""

    def __init__(
        self,
        vocab: int = 1000,
        dim: int = 64,
        heads: int = 4,
        layers: int = 2,
        max_len: int = 64,
        hand_written: bool = False,
        gelu: Callable[[torch.Tensor], torch.Tensor] = F.gelu,
    ):
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(max_len, dim)
        self.norm = HandLayerNorm(dim) if hand_written else nn.LayerNorm(dim)
        self.layers = nn.ModuleList(
            EncoderLayer(dim, heads, hand_written, gelu) for _ in range(layers)
        )

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.norm(self.tok(input_ids) + self.pos(torch.arange(t).unsqueeze(0)))
        bias = (1.0 - attention_mask[:, None, None, :].to(torch.float32)) * torch.finfo(
            torch.float32
        ).min
        for layer in self.layers:
            x = layer(x, bias)
        mask = attention_mask.unsqueeze(-1).to(x.dtype)
        return (x * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class LSTMTagger(nn.Module):
    def __init__(self, vocab: int = 500, dim: int = 32, tags: int = 9):
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.lstm = nn.LSTM(dim, dim, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(2 * dim, tags)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h, _ = self.lstm(self.emb(tokens))
        return self.out(h).log_softmax(-1)


class GRUClassifier(nn.Module):
    def __init__(self, features: int = 16, dim: int = 32, classes: int = 4):
        super().__init__()
        self.proj = nn.Linear(features, dim)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, last = self.gru(torch.tanh(self.proj(x)))
        return self.out(self.norm(last[0] + h.mean(1)))


class CondNet(nn.Module):
    """A small CNN whose head depends on the input through torch.cond (exports an If)."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(conv_bn(3, 16), nn.ReLU(), conv_bn(16, 16, 3, 2), nn.ReLU())
        self.bright = nn.Sequential(conv_bn(16, 16), nn.ReLU(), nn.Conv2d(16, 4, 1))
        self.dark = nn.Sequential(
            nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.Sigmoid(), nn.Conv2d(16, 4, 1)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        return torch.cond(x.mean() > 0, lambda f: self.bright(f), lambda f: self.dark(f), (f,))


class LoopNet(nn.Module):
    """A recurrent refinement applied a fixed number of times with while_loop (exports a Loop)."""

    def __init__(self, dim: int = 32, steps: int = 4):
        super().__init__()
        self.steps = steps
        self.inp = nn.Linear(dim, dim)
        self.cell_a = nn.Linear(dim, dim)
        self.cell_b = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch._higher_order_ops.while_loop import while_loop

        h0 = torch.tanh(self.inp(x))

        def cond(i: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
            return i < self.steps

        def body(i: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            z = self.cell_b(F.gelu(self.cell_a(h)))
            return i + 1, self.norm(h + z)

        _, h = while_loop(cond, body, (torch.zeros((), dtype=torch.int64), h0))
        return self.out(h)


class UNetDecoder(nn.Module):
    """Encoder-decoder with ConvTranspose upsampling, BatchNorm after each, skip concats."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.e1 = nn.Sequential(conv_bn(3, 16), nn.ReLU())
        self.e2 = nn.Sequential(nn.MaxPool2d(2), conv_bn(16, 32), nn.ReLU())
        self.e3 = nn.Sequential(nn.MaxPool2d(2), conv_bn(32, 64), nn.ReLU())
        self.u2 = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 2, 2, bias=False), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.d2 = nn.Sequential(
            nn.ZeroPad2d(1), nn.Conv2d(64, 32, 3), nn.BatchNorm2d(32), nn.ReLU()
        )
        self.u1 = nn.Sequential(nn.ConvTranspose2d(32, 16, 2, 2), nn.BatchNorm2d(16), nn.ReLU())
        self.d1 = nn.Sequential(conv_bn(32, 16), nn.ReLU())
        self.head = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.e1(x)
        b = self.e2(a)
        c = self.e3(b)
        y = self.d2(torch.cat([self.u2(c), b], 1))
        y = self.d1(torch.cat([self.u1(y), a], 1))
        return self.head(y)
