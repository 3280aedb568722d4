"""The example models' networks (torch modules), trained and exported by make_models.py.

Small on purpose: each stands for one family the passes must handle (a CNN with
BatchNorm, a transformer encoder with erf-GELU, an LSTM, a YOLO-style detector with
SiLU, a model with an If from torch.cond). torch is used in scripts/ only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CANVAS = 32  # detector image side, pixels
DETECTOR_STRIDE = 4  # detector grid cell side, pixels


class DigitsCNN(nn.Module):
    """Conv/BN/ReLU stem, depthwise-separable block, residual block, pools, two Gemms."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        self.depthwise = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # keeps its bias
        self.depthwise_bn = nn.BatchNorm2d(16)
        self.pointwise = nn.Conv2d(16, 32, 1, bias=False)
        self.pointwise_bn = nn.BatchNorm2d(32)
        self.res1 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.res1_bn = nn.BatchNorm2d(32)
        self.res2 = nn.Conv2d(32, 32, 3, padding=1, bias=False)
        self.res2_bn = nn.BatchNorm2d(32)
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.fc2 = nn.Linear(64, 10)
        self.dropout = nn.Dropout(0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))  # [N,16,16,16]
        x = F.max_pool2d(x, 2)  # [N,16,8,8]
        x = F.relu(self.depthwise_bn(self.depthwise(x)))
        x = F.relu(self.pointwise_bn(self.pointwise(x)))  # [N,32,8,8]
        y = F.relu(self.res1_bn(self.res1(x)))
        x = F.relu(x + self.res2_bn(self.res2(y)))
        x = F.avg_pool2d(x, 2)  # [N,32,4,4]
        x = torch.flatten(x, 1)
        x = self.dropout(F.relu(self.fc1(x)))
        return self.fc2(x)


def gelu_erf(x: torch.Tensor) -> torch.Tensor:
    """Exact GELU spelled with Erf, as most exported transformers carry it."""
    return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class EncoderBlock(nn.Module):
    """Pre-LN encoder block; attention written out with MatMul/Softmax."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(dim)
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        head_dim = dim // self.heads
        h = self.ln1(x)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, tokens, self.heads, head_dim).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(head_dim)
        attn = torch.matmul(torch.softmax(scores, dim=-1), v)
        attn = attn.transpose(1, 2).reshape(batch, tokens, dim)
        x = x + self.proj(attn)
        return x + self.fc2(gelu_erf(self.fc1(self.ln2(x))))


class DigitsTransformer(nn.Module):
    """8 row tokens -> linear + positional embedding -> 2 encoder blocks -> mean pool."""

    def __init__(self, dim: int = 32, heads: int = 4, hidden: int = 64, blocks: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.position = nn.Parameter(torch.randn(1, 8, dim) * 0.02)
        self.blocks = nn.ModuleList(EncoderBlock(dim, heads, hidden) for _ in range(blocks))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x) + self.position  # [N,8,dim]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x).mean(dim=1))


class DigitsLSTM(nn.Module):
    """The 8 rows as 8 time steps through one LSTM layer; last hidden state -> Gemm."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x)
        return self.head(h[-1])


def conv_bn_silu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.SiLU(),
    )


class DigitsDetector(nn.Module):
    """YOLOv8-style anchor-free head on an 8x8 grid (stride 4) of a 32x32 image.

    Output [N, 4 + 10, 64]: per anchor a box (cx, cy, w, h) in pixels, decoded in
    the graph from distances to the box sides, concatenated with sigmoid class scores.
    """

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            conv_bn_silu(1, 16, stride=2),  # 16x16
            conv_bn_silu(16, 32),
            conv_bn_silu(32, 32, stride=2),  # 8x8
            conv_bn_silu(32, 32),
            conv_bn_silu(32, 32),
        )
        self.box = nn.Conv2d(32, 4, 1)
        self.cls = nn.Conv2d(32, 10, 1)
        side = CANVAS // DETECTOR_STRIDE
        centres = (torch.arange(side, dtype=torch.float32) + 0.5) * DETECTOR_STRIDE
        gy, gx = torch.meshgrid(centres, centres, indexing="ij")
        self.register_buffer("anchors", torch.stack([gx, gy]).reshape(1, 2, side * side))

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Side distances in pixels [N,4,A] (left, top, right, bottom) and class logits [N,10,A]."""
        f = self.backbone(x)
        distances = F.softplus(self.box(f).flatten(2)) * DETECTOR_STRIDE
        return distances, self.cls(f).flatten(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        distances, logits = self.raw(x)
        lt, rb = distances[:, :2], distances[:, 2:]
        x1y1, x2y2 = self.anchors - lt, self.anchors + rb
        boxes = torch.cat([(x1y1 + x2y2) / 2, x2y2 - x1y1], dim=1)
        return torch.cat([boxes, torch.sigmoid(logits)], dim=1)


class DigitsGated(nn.Module):
    """Two trained branches chosen by a data-dependent test on the input's mean ink.

    Exported with torch.cond -> ONNX If. The test is on the mean of the whole feed,
    so it routes per sample only with batch 1 (as the calibration/eval feeds are);
    training routes each sample by its own mean, which is the same thing.
    """

    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold
        self.light = nn.Sequential(  # thin strokes: finer convolutions
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 10),
        )
        self.heavy = nn.Sequential(  # thick strokes: a strided conv and an MLP
            nn.Conv2d(1, 16, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 8 * 8, 64),
            nn.ReLU(),
            nn.Linear(64, 10),
        )

    def train_forward(self, x: torch.Tensor) -> torch.Tensor:
        heavy = (x.mean(dim=(1, 2, 3)) > self.threshold)[:, None]
        return torch.where(heavy, self.heavy(x), self.light(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cond(x.mean() > self.threshold, self.heavy, self.light, (x,))
