"""The task models' architectures (torch modules), trained by make_task_models.py.

Each reproduces the graph shape of a deployed family that int8 quantizers handle badly
(issue 14): a YOLOv8-style detector (decoupled head, DFL box regression: softmax over 16
bins -> expected distance; boxes and class scores in one Concat output), a DBNet-style
text detector (FPN, sigmoid probability map), a CRNN recogniser (convs, BiLSTM, CTC
logits) and a MobileNetV3-style classifier (hard-swish written as x * HardSigmoid(x),
squeeze-excitation, depthwise convs). Small enough to commit (< 1 MB each). torch is
used in scripts/ only.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

REG_MAX = 16  # DFL bins per box side, as YOLOv8


def conv_bn(cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)
    )


class ConvSiLU(nn.Module):
    def __init__(self, cin: int, cout: int, k: int = 3, s: int = 1):
        super().__init__()
        self.conv = conv_bn(cin, cout, k, s)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.conv(x))


class C2f(nn.Module):
    """YOLOv8's CSP block: split, a chain of bottlenecks, concat everything, 1x1 fuse."""

    def __init__(self, cin: int, cout: int, n: int = 1):
        super().__init__()
        self.hidden = cout // 2
        self.cv1 = ConvSiLU(cin, 2 * self.hidden, 1)
        self.blocks = nn.ModuleList(
            nn.Sequential(ConvSiLU(self.hidden, self.hidden), ConvSiLU(self.hidden, self.hidden))
            for _ in range(n)
        )
        self.cv2 = ConvSiLU((2 + n) * self.hidden, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = list(self.cv1(x).chunk(2, 1))
        for block in self.blocks:
            parts.append(parts[-1] + block(parts[-1]))
        return self.cv2(torch.cat(parts, 1))


class YoloV8Mini(nn.Module):
    """YOLOv8-style detector; output [batch, 4 + classes, anchors]: xyxy pixels, then scores."""

    strides = (8, 16, 32)

    def __init__(self, classes: int = 5, size: int = 128):
        super().__init__()
        self.classes = classes
        c3, c4, c5 = 32, 40, 56
        self.stem = nn.Sequential(ConvSiLU(3, 16, 3, 2), ConvSiLU(16, 24, 3, 2), C2f(24, 24))
        self.down3 = nn.Sequential(ConvSiLU(24, c3, 3, 2), C2f(c3, c3))
        self.down4 = nn.Sequential(ConvSiLU(c3, c4, 3, 2), C2f(c4, c4))
        self.down5 = nn.Sequential(ConvSiLU(c4, c5, 3, 2), C2f(c5, c5))
        self.top4 = C2f(c5 + c4, c4)
        self.top3 = C2f(c4 + c3, c3)
        self.bot4 = ConvSiLU(c3, c3, 3, 2)
        self.out4 = C2f(c3 + c4, c4)
        self.bot5 = ConvSiLU(c4, c4, 3, 2)
        self.out5 = C2f(c4 + c5, c5)
        self.box_heads = nn.ModuleList(
            nn.Sequential(ConvSiLU(c, 24), ConvSiLU(24, 24), nn.Conv2d(24, 4 * REG_MAX, 1))
            for c in (c3, c4, c5)
        )
        self.cls_heads = nn.ModuleList(
            nn.Sequential(ConvSiLU(c, 24), ConvSiLU(24, 24), nn.Conv2d(24, classes, 1))
            for c in (c3, c4, c5)
        )
        points, strides = [], []
        for stride in self.strides:
            cells = size // stride
            gy, gx = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
            points.append(torch.stack((gx, gy), -1).reshape(-1, 2).float() + 0.5)
            strides.append(torch.full((cells * cells, 1), float(stride)))
        self.register_buffer("anchor_points", torch.cat(points).T.contiguous())  # [2, A]
        self.register_buffer("anchor_strides", torch.cat(strides).T.contiguous())  # [1, A]
        self.register_buffer(
            "bins", torch.arange(REG_MAX, dtype=torch.float32).view(1, REG_MAX, 1, 1)
        )
        for head in self.cls_heads:  # YOLOv8's prior: few objects per cell
            nn.init.constant_(head[-1].bias, -4.0)

    def raw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Box logits [b, 4*REG_MAX, A] and class logits [b, classes, A] (training)."""
        p3 = self.down3(self.stem(x))
        p4 = self.down4(p3)
        p5 = self.down5(p4)
        t4 = self.top4(torch.cat([F.interpolate(p5, scale_factor=2.0, mode="nearest"), p4], 1))
        n3 = self.top3(torch.cat([F.interpolate(t4, scale_factor=2.0, mode="nearest"), p3], 1))
        n4 = self.out4(torch.cat([self.bot4(n3), t4], 1))
        n5 = self.out5(torch.cat([self.bot5(n4), p5], 1))
        b = x.shape[0]
        boxes = [
            h(f).reshape(b, 4 * REG_MAX, -1)
            for f, h in zip((n3, n4, n5), self.box_heads, strict=True)
        ]
        scores = [
            h(f).reshape(b, self.classes, -1)
            for f, h in zip((n3, n4, n5), self.cls_heads, strict=True)
        ]
        return torch.cat(boxes, 2), torch.cat(scores, 2)

    def distances(self, box_logits: torch.Tensor) -> torch.Tensor:
        """DFL: softmax over the bins of each side, expected bin = distance in strides."""
        b = box_logits.shape[0]
        # [b, 4, 16, A] -> softmax over bins -> 1x1 conv with weights 0..15, as YOLOv8 exports
        probs = box_logits.reshape(b, 4, REG_MAX, -1).transpose(1, 2).softmax(1)
        return (probs * self.bins).sum(1)  # [b, 4, A]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        box_logits, cls_logits = self.raw(x)
        lt, rb = self.distances(box_logits).chunk(2, 1)
        xy0 = (self.anchor_points - lt) * self.anchor_strides
        xy1 = (self.anchor_points + rb) * self.anchor_strides
        return torch.cat([xy0, xy1, cls_logits.sigmoid()], 1)


class DBNetMini(nn.Module):
    """DBNet-style: conv backbone, FPN to 1/4 scale, upsampled sigmoid probability map."""

    def __init__(self) -> None:
        super().__init__()
        self.c2 = nn.Sequential(conv_bn(3, 16, 3, 2), nn.ReLU(), conv_bn(16, 24, 3, 2), nn.ReLU())
        self.c3 = nn.Sequential(conv_bn(24, 32, 3, 2), nn.ReLU(), conv_bn(32, 32), nn.ReLU())
        self.c4 = nn.Sequential(conv_bn(32, 48, 3, 2), nn.ReLU(), conv_bn(48, 48), nn.ReLU())
        self.c5 = nn.Sequential(conv_bn(48, 64, 3, 2), nn.ReLU(), conv_bn(64, 64), nn.ReLU())
        self.lat = nn.ModuleList(nn.Conv2d(c, 32, 1) for c in (24, 32, 48, 64))
        self.smooth = nn.ModuleList(nn.Conv2d(32, 8, 3, padding=1) for _ in range(4))
        self.head = nn.Sequential(
            conv_bn(32, 16),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 16, 2, 2),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 2, 2),
        )

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        f2 = self.c2(x)
        f3 = self.c3(f2)
        f4 = self.c4(f3)
        f5 = self.c5(f4)
        p5 = self.lat[3](f5)
        p4 = self.lat[2](f4) + F.interpolate(p5, scale_factor=2.0, mode="nearest")
        p3 = self.lat[1](f3) + F.interpolate(p4, scale_factor=2.0, mode="nearest")
        p2 = self.lat[0](f2) + F.interpolate(p3, scale_factor=2.0, mode="nearest")
        outs = [
            F.interpolate(s(p), scale_factor=float(k), mode="nearest") if k > 1 else s(p)
            for s, p, k in zip(self.smooth, (p2, p3, p4, p5), (1, 2, 4, 8), strict=True)
        ]
        return self.head(torch.cat(outs, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits(x).sigmoid()


class CRNNMini(nn.Module):
    """CRNN: conv stack to height 1, BiLSTM over the width, per-frame class logits [b, T, C]."""

    def __init__(self, classes: int):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, 16), nn.ReLU(), nn.MaxPool2d(2, 2),  # 16x64
            conv_bn(16, 32), nn.ReLU(), nn.MaxPool2d(2, 2),  # 8x32
            conv_bn(32, 48), nn.ReLU(), conv_bn(48, 64), nn.ReLU(),
            nn.MaxPool2d((2, 1), (2, 1)),  # 4x32
            conv_bn(64, 96), nn.ReLU(), nn.MaxPool2d((4, 1), (4, 1)),  # 1x32
        )  # fmt: skip
        self.rnn = nn.LSTM(96, 64, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(128, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x).squeeze(2).transpose(1, 2)  # [b, T, 96]
        return self.fc(self.rnn(f)[0])


class HSwish(nn.Module):
    """Hard-swish written out as x * HardSigmoid(x), as PaddleOCR's exports carry it."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.down = nn.Conv2d(channels, reduced, 1)
        self.up = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        return x * F.hardsigmoid(self.up(F.relu(self.down(s))))


class Bneck(nn.Module):
    """MobileNetV3 block: 1x1 expand, depthwise kxk, optional SE, 1x1 project, residual."""

    def __init__(self, cin: int, hidden: int, cout: int, k: int, s: int, se: bool, hs: bool):
        super().__init__()
        act: type[nn.Module] = HSwish if hs else nn.ReLU
        self.expand = nn.Sequential(conv_bn(cin, hidden, 1), act())
        self.depthwise = nn.Sequential(conv_bn(hidden, hidden, k, s, groups=hidden), act())
        self.se = SqueezeExcite(hidden, max(8, hidden // 4)) if se else nn.Identity()
        self.project = conv_bn(hidden, cout, 1)
        self.residual = s == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.se(self.depthwise(self.expand(x))))
        return x + y if self.residual else y


class MobileNetV3Mini(nn.Module):
    """MobileNetV3-small-like classifier: logits [batch, classes]."""

    def __init__(self, classes: int):
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), HSwish())
        cfg = [  # cin, hidden, cout, k, s, se, hs
            (16, 16, 16, 3, 2, True, False),
            (16, 64, 24, 3, 2, False, False),
            (24, 72, 24, 3, 1, False, False),
            (24, 96, 40, 5, 2, True, True),
            (40, 160, 40, 5, 1, True, True),
            (40, 120, 48, 5, 1, True, True),
            (48, 144, 64, 5, 2, True, True),
            (64, 192, 64, 5, 1, True, True),
        ]
        self.blocks = nn.Sequential(*(Bneck(*c) for c in cfg))
        self.head = nn.Sequential(conv_bn(64, 192, 1), HSwish())
        self.classifier = nn.Sequential(nn.Linear(192, 256), HSwish(), nn.Linear(256, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return self.classifier(x.mean((2, 3)))
