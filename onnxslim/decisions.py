"""Label-free decision measures: how far a model's outputs moved, counted in decisions.

Pure numpy functions over the outputs of the original model (`reference`) and of the
compressed one (`candidate`), each feed's array in a list. onnxslim.agreement picks
one per output by its role and holds it to the target; each docstring says why the
measure tracks what the output's users decide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MAX_CLASSES = 100_000  # a last axis longer than this is not a class axis
MAP_THRESHOLD = 0.5


def classifier_shaped(array: np.ndarray) -> bool:
    """Float scores with a class axis last: rank >= 2 and 2..MAX_CLASSES entries on it.

    The shape rule only: it says top-1 can be read, not that the output is a
    classifier (`detect_roles` adds the evidence of values and producing op).
    """
    return (
        array.dtype.kind == "f"
        and array.ndim >= 2
        and 2 <= array.shape[-1] <= MAX_CLASSES
        and array.size > 0
    )


def is_distribution(array: np.ndarray) -> bool:
    """Rows of probabilities (in [0, 1], summing to 1) or log-probabilities (logsumexp 0)."""
    if not classifier_shaped(array) or not np.all(np.isfinite(array)):
        return False
    values = array.astype(np.float64)
    if values.min() >= -1e-6 and values.max() <= 1 + 1e-6:
        return bool(np.allclose(values.sum(-1), 1.0, atol=1e-3))
    if values.max() <= 1e-6:
        top = values.max(-1, keepdims=True)
        lse = top[..., 0] + np.log(np.exp(values - top).sum(-1))
        return bool(np.allclose(lse, 0.0, atol=1e-3))
    return False


def probabilities(scores: np.ndarray) -> np.ndarray:
    """Class probabilities of score rows: as given, exp of log-probabilities, else softmax."""
    values = np.asarray(scores, dtype=np.float64)
    if is_distribution(values):
        return values if values.min() >= -1e-6 else np.exp(values)
    shifted = values - values.max(-1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(-1, keepdims=True)


def decision_loss(reference: np.ndarray, candidate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row (all leading axes): (changed, loss) where loss = p[a_ref] - p[a_cand].

    p are the original's probabilities for the row, taken as the truth: where both
    models pick the same class nothing is lost; where the candidate picks another
    class, the expected accuracy lost is how much more likely the original found its
    own pick. A flip of a near tie (the original unsure) costs almost nothing, a
    flip of a confident decision costs up to a whole decision. Without labels this
    is the expected task-accuracy change, and never more than the disagreement.
    """
    p = probabilities(reference)
    a = np.asarray(reference).argmax(-1)
    b = np.asarray(candidate).argmax(-1)
    picked_ref = np.take_along_axis(p, a[..., None], -1)[..., 0]
    picked_cand = np.take_along_axis(p, b[..., None], -1)[..., 0]
    return a != b, np.maximum(picked_ref - picked_cand, 0.0)


def top1_loss(
    reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]
) -> tuple[float, int, int]:
    """(expected decisions lost, decisions that changed, decisions) over every row.

    A classifier, tagger or attention row acts on its argmax: only a changed argmax
    changes what the user gets, weighted by how sure the original was (decision_loss).
    """
    lost, changed, total = 0.0, 0, 0
    for r, c in zip(reference, candidate, strict=True):
        flips, loss = decision_loss(r, c)
        lost += float(loss.sum())
        changed += int(np.count_nonzero(flips))
        total += flips.size
    return lost, changed, total


def exact_agreement(
    reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]
) -> tuple[int, int]:
    """Elements equal in both (integer outputs are the decisions: ids, tags, masks)."""
    same = total = 0
    for r, c in zip(reference, candidate, strict=True):
        same += int(np.count_nonzero(np.asarray(r) == np.asarray(c)))
        total += np.asarray(r).size
    return same, total


def ctc_decode(frames: np.ndarray, blank: int) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of [T, batch, C] scores: argmax, repeats collapsed, blanks removed."""
    best = np.asarray(frames).argmax(-1)  # [T, batch]
    decoded = []
    for column in best.T:
        keep = np.ones(column.shape, dtype=bool)
        keep[1:] = column[1:] != column[:-1]
        decoded.append(tuple(int(x) for x in column[keep] if x != blank))
    return decoded


def ctc_loss(
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    time_axis: int,
    batch_axis: int,
    blank: int,
) -> tuple[float, int, int]:
    """(expected sequences lost, sequences decoded differently, sequences).

    The reader's user sees the decoded text, so the decision is the whole sequence
    (greedy decoding: argmax per frame, repeats collapsed, blanks removed); a
    frame-level figure hides a wrong character among many agreeing blanks. A
    sequence decoded differently costs the largest decision_loss among its changed
    frames: how sure the original was of the frame that changed the text (a product
    of frame probabilities would vanish on long sequences and hide a collapse).
    """
    lost, changed, total = 0.0, 0, 0
    axes = (time_axis, batch_axis)
    for r, c in zip(reference, candidate, strict=True):
        ref = np.moveaxis(np.asarray(r), axes, (0, 1))
        cand = np.moveaxis(np.asarray(c), axes, (0, 1))
        _, loss = decision_loss(ref, cand)  # [T, batch]
        decoded = zip(ctc_decode(ref, blank), ctc_decode(cand, blank), strict=True)
        for column, (a, b) in zip(loss.T, decoded, strict=True):
            total += 1
            if a != b:
                changed += 1
                lost += float(column.max(initial=0.0))
    return lost, changed, total


def map_iou(
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    threshold: float = MAP_THRESHOLD,
) -> tuple[float, float]:
    """(IoU of the maps thresholded at `threshold`, share of reference elements above it).

    A probability map is acted on through its thresholded regions (text boxes, faces,
    voiced frames); IoU counts the area where that decision changed, relative to the
    area decided positive, so a thin missed region counts as much as a large one.
    """
    union = inter = positive = total = 0
    for r, c in zip(reference, candidate, strict=True):
        a, b = np.asarray(r) > threshold, np.asarray(c) > threshold
        inter += int(np.count_nonzero(a & b))
        union += int(np.count_nonzero(a | b))
        positive += int(np.count_nonzero(a))
        total += a.size
    iou = inter / union if union else 1.0
    return iou, positive / total if total else 0.0


def neighbour_loss(reference: np.ndarray, candidate: np.ndarray) -> tuple[float, int, int]:
    """(expected neighbours lost, rows whose nearest other row changed, rows) of [N, D] sets.

    Embeddings are used for retrieval and clustering: what matters is which vector
    is nearest, not the vectors' exact values. Each row's nearest neighbour (cosine)
    among the other held-out rows is one decision. A changed neighbour costs how much
    farther it is in the original than the original's own nearest, on the scale from
    that nearest (0) to the row's median other (1): a swap of two near-equal
    neighbours costs little, a neighbour that was nowhere near costs a whole decision.
    """
    ref = _unit_rows(reference)
    cand = _unit_rows(candidate)
    n = ref.shape[0]
    if n < 3:
        return 0.0, 0, 0
    a, b = ref @ ref.T, cand @ cand.T
    np.fill_diagonal(a, -np.inf)
    np.fill_diagonal(b, -np.inf)
    own, new = a.argmax(1), b.argmax(1)
    rows = np.arange(n)
    best = a[rows, own]
    others = np.where(np.isinf(a), np.nan, a)
    spread = best - np.nanmedian(others, axis=1)
    gap = best - a[rows, new]
    loss = np.where(spread > 0, np.clip(gap / np.where(spread > 0, spread, 1.0), 0.0, 1.0), 1.0)
    changed = own != new
    return float(loss[changed].sum()), int(np.count_nonzero(changed)), n


def _unit_rows(x: np.ndarray) -> np.ndarray:
    rows = np.asarray(x, dtype=np.float64).reshape(x.shape[0], -1)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms > 0, norms, 1.0)


def sqnr_db(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """Signal-to-quantization-noise ratio over all feeds: 10 log10(sum ref^2 / sum err^2).

    For regressions (boxes, offsets, hidden states) the relative error is what moves
    a decoded box or a downstream layer; inf when equal, -inf for NaN/inf results.
    """
    signal = noise = 0.0
    for r, c in zip(reference, candidate, strict=True):
        a = np.asarray(r, dtype=np.float64)
        b = np.asarray(c, dtype=np.float64)
        if not np.all(np.isfinite(b)) and np.all(np.isfinite(a)):
            return -math.inf
        signal += float(np.sum(a * a))
        noise += float(np.sum((a - b) ** 2))
    if noise == 0:
        return math.inf
    return 10 * math.log10(max(signal, 1e-300) / noise)


def cosine(reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]) -> float:
    """Cosine similarity of all feeds' values taken as one vector."""
    dot = ref_sq = cand_sq = 0.0
    for r, c in zip(reference, candidate, strict=True):
        a = np.asarray(r, dtype=np.float64).ravel()
        b = np.asarray(c, dtype=np.float64).ravel()
        dot += float(a @ b)
        ref_sq += float(a @ a)
        cand_sq += float(b @ b)
    denom = math.sqrt(ref_sq * cand_sq)
    return dot / denom if denom > 0 else (1.0 if ref_sq == cand_sq else 0.0)
