"""Synthetic but realistic images for the task models (numpy + PIL; no download, no torch).

Each generator is seeded and returns float32 NCHW images in [0, 1] plus the targets its
task needs: shape/digit scenes with boxes on textured backgrounds (detector,
classifier), lines of rendered text with their boxes (text detector), single rendered
strings (recogniser). Textures mix smooth noise, gradients, stripes and speckle so the
networks see the spread of activations real photos give, not flat colours.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from task_metrics import CHARSET

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
FONT_NAMES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf")
SHAPES = ("circle", "square", "triangle", "cross", "digit")
CLASS_SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "star", "digit")


def fonts(size: int) -> list[ImageFont.FreeTypeFont]:
    return [ImageFont.truetype(str(FONT_DIR / name), size) for name in FONT_NAMES]


def texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """An RGB background [H, W, 3] in [0, 1]: smooth noise + gradient + stripes + speckle."""
    small = rng.random((max(2, height // 8), max(2, width // 8), 3))
    smooth = np.asarray(
        Image.fromarray((small * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC),
        dtype=np.float32,
    )
    base = rng.random(3).astype(np.float32) * 0.6 + 0.2
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    ramp = (np.cos(angle) * xx / width + np.sin(angle) * yy / height)[..., None]
    img = base + 0.25 * (smooth / 255.0 - 0.5) + rng.uniform(-0.2, 0.2) * ramp
    if rng.random() < 0.5:
        period = rng.uniform(4, 16)
        img = img + rng.uniform(0.03, 0.12) * np.sin((xx * np.cos(angle) + yy) / period)[..., None]
    img = img + rng.normal(0, rng.uniform(0.01, 0.05), img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def _colour_far_from(rng: np.random.Generator, background: np.ndarray) -> tuple[int, int, int]:
    mean = background.mean()
    value = rng.uniform(0.0, 0.3) if mean > 0.5 else rng.uniform(0.7, 1.0)
    tint = np.clip(value + rng.uniform(-0.15, 0.15, 3), 0, 1)
    return tuple(int(c * 255) for c in tint)  # type: ignore[return-value]


def draw_shape(
    draw: ImageDraw.ImageDraw,
    kind: str,
    box: tuple[float, float, float, float],
    colour: tuple[int, int, int],
    rng: np.random.Generator,
    font_list: list[ImageFont.FreeTypeFont],
) -> None:
    """Draw one object filling `box` (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if kind == "circle":
        draw.ellipse(box, fill=colour)
    elif kind == "ring":
        draw.ellipse(box, outline=colour, width=max(2, int(w / 6)))
    elif kind == "square":
        draw.rectangle(box, fill=colour)
    elif kind == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=colour)
    elif kind == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=colour)
    elif kind == "cross":
        t = max(2.0, w / 4)
        draw.rectangle((cx - t / 2, y0, cx + t / 2, y1), fill=colour)
        draw.rectangle((x0, cy - t / 2, x1, cy + t / 2), fill=colour)
    elif kind == "star":
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.45)
        a = np.arange(10) * np.pi / 5 - np.pi / 2
        pts = [
            (cx + w / 2 * ri * np.cos(ai), cy + h / 2 * ri * np.sin(ai))
            for ri, ai in zip(r, a, strict=True)
        ]
        draw.polygon(pts, fill=colour)
    else:  # a digit glyph stretched over the box
        font = font_list[int(rng.integers(len(font_list)))]
        glyph = str(int(rng.integers(10)))
        gx0, gy0, gx1, gy1 = draw.textbbox((0, 0), glyph, font=font)
        layer = Image.new("L", (gx1 - gx0 + 2, gy1 - gy0 + 2), 0)
        ImageDraw.Draw(layer).text((1 - gx0, 1 - gy0), glyph, fill=255, font=font)
        layer = layer.resize((max(1, int(w)), max(1, int(h))), Image.BILINEAR)
        draw._image.paste(colour, (int(x0), int(y0)), layer)  # type: ignore[attr-defined]


def _to_nchw(images: list[np.ndarray]) -> np.ndarray:
    return np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2), dtype=np.float32)


def detection_scenes(
    n: int, seed: int, size: int = 128, max_objects: int = 5
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Images [n, 3, size, size] and per image boxes [k, 5] (x0, y0, x1, y1, class)."""
    rng = np.random.default_rng(seed)
    font_list = fonts(40)
    images, targets = [], []
    for _ in range(n):
        bg = texture(rng, size, size)
        img = Image.fromarray((bg * 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        boxes: list[list[float]] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            side = rng.uniform(12, 48)
            aspect = rng.uniform(0.7, 1.4)
            w, h = side * aspect, side / aspect
            x0, y0 = rng.uniform(0, size - w), rng.uniform(0, size - h)
            box = (x0, y0, x0 + w, y0 + h)
            if any(_iou(box, b[:4]) > 0.3 for b in boxes):
                continue
            cls = int(rng.integers(len(SHAPES)))
            region = bg[int(y0) : int(y0 + h), int(x0) : int(x0 + w)]
            draw_shape(draw, SHAPES[cls], box, _colour_far_from(rng, region), rng, font_list)
            boxes.append([*box, float(cls)])
        images.append(np.asarray(img, dtype=np.float32) / 255.0)
        targets.append(np.asarray(boxes, dtype=np.float32).reshape(-1, 5))
    return _to_nchw(images), targets


def classification_images(n: int, seed: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Images [n, 3, size, size] of one object (class of CLASS_SHAPES) with clutter."""
    rng = np.random.default_rng(seed)
    font_list = fonts(40)
    images, labels = [], []
    for _ in range(n):
        bg = texture(rng, size, size)
        img = Image.fromarray((bg * 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(int(rng.integers(0, 3))):  # distractor strokes
            pts = rng.uniform(0, size, 4)
            draw.line(list(pts), fill=_colour_far_from(rng, bg), width=int(rng.integers(1, 3)))
        cls = int(rng.integers(len(CLASS_SHAPES)))
        side = rng.uniform(size * 0.35, size * 0.8)
        x0, y0 = rng.uniform(0, size - side), rng.uniform(0, size - side)
        box = (x0, y0, x0 + side, y0 + side)
        colour = _colour_far_from(rng, bg[int(y0) : int(y0 + side), int(x0) : int(x0 + side)])
        draw_shape(draw, CLASS_SHAPES[cls], box, colour, rng, font_list)
        images.append(np.asarray(img, dtype=np.float32) / 255.0)
        labels.append(cls)
    return _to_nchw(images), np.asarray(labels, dtype=np.int64)


def random_text(rng: np.random.Generator, low: int, high: int) -> str:
    return "".join(
        CHARSET[int(i)] for i in rng.integers(len(CHARSET), size=rng.integers(low, high))
    )


def text_pages(
    n: int, seed: int, height: int = 64, width: int = 256
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Images [n, 3, H, W] with 1-3 text lines; shrunk text masks [n, 1, H, W]; boxes [k, 4]."""
    rng = np.random.default_rng(seed)
    by_size = {s: fonts(s) for s in (11, 13, 15, 18)}
    images, masks, targets = [], [], []
    for _ in range(n):
        bg = texture(rng, height, width)
        img = Image.fromarray((bg * 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        mask = np.zeros((height, width), np.float32)
        boxes: list[list[float]] = []
        y = rng.uniform(1, 8)
        for _ in range(int(rng.integers(1, 4))):
            size = int(rng.choice(list(by_size)))
            font = by_size[size][int(rng.integers(len(FONT_NAMES)))]
            text = random_text(rng, 3, 14)
            x = rng.uniform(2, width * 0.4)
            x0, y0, x1, y1 = draw.textbbox((x, y), text, font=font)
            if y1 > height - 1 or x1 > width - 1:
                break
            colour = _colour_far_from(rng, bg[int(y0) : int(y1), int(x0) : int(x1)])
            draw.text((x, y), text, fill=colour, font=font)
            shrink = 0.2 * (y1 - y0)
            mask[
                int(y0 + shrink) : int(np.ceil(y1 - shrink)),
                int(x0 + shrink) : int(np.ceil(x1 - shrink)),
            ] = 1
            boxes.append([x0, y0, x1, y1])
            y = y1 + rng.uniform(3, 10)
        images.append(np.asarray(img, dtype=np.float32) / 255.0)
        masks.append(mask[None])
        targets.append(np.asarray(boxes, dtype=np.float32).reshape(-1, 4))
    return _to_nchw(images), np.stack(masks), targets


def text_strings(
    n: int, seed: int, height: int = 32, width: int = 128, max_len: int = 8
) -> tuple[np.ndarray, list[str]]:
    """Grey images [n, 1, H, W] of one rendered string each, and the strings."""
    rng = np.random.default_rng(seed)
    by_size = {s: fonts(s) for s in (18, 20, 22, 24)}
    images, texts = [], []
    for _ in range(n):
        bg = texture(rng, height, width)
        img = Image.fromarray((bg * 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        while True:
            text = random_text(rng, 3, max_len + 1)
            size = int(rng.choice(list(by_size)))
            font = by_size[size][int(rng.integers(len(FONT_NAMES)))]
            x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
            if x1 - x0 < width - 6:
                break
        x = rng.uniform(1, width - (x1 - x0) - 2) - x0
        y = (height - (y1 - y0)) / 2 - y0 + rng.uniform(-2, 2)
        region = bg[max(0, int(y + y0)) : int(y + y1), max(0, int(x + x0)) : int(x + x1)]
        draw.text((x, y), text, fill=_colour_far_from(rng, region), font=font)
        grey = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
        images.append(grey[None])
        texts.append(text)
    return np.stack(images).astype(np.float32), texts


def _iou(a: tuple[float, ...] | list[float], b: tuple[float, ...] | list[float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0
