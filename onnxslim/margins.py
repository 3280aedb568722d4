"""Top-1 flips too rare for a few held-out rows to count, estimated from the original's margins.

A classifier checked on the held-out quarter of 32 calibration feeds makes 8 decisions:
one flip is 12.5 points, so "none of 8 changed" cannot vouch for one point. The default
`prune` on task_mobilenetv3 passed so at 70 % sparsity and changed 4.7 % of 128 other
top-1s; name_romanizer clustered to 5.97 bits changed 2 of 64 next tokens with 0 of its
16 held-out ones. Where the benchmark counts agreement, a changed top-1 costs a whole
decision: the figure is the raw disagreement (not weighed by the original's
probabilities, which on lac_bigru gave 0.41 and 0.68 points where 5.4 and 6.5 % of
the tags changed).

So the figure of a classifier or tagger output is the larger of the held-out rows'
disagreement and a smooth estimate (`estimated_flips`):

    flips = mean over rows i of P(m_i + d < 0),  d ~ Normal(mean, spread of d on held-out rows)

where m_i is the original's top-1 margin (gap to the runner-up, in logits) on every
calibration row (the float model's margins are not biased by fitting, so the fit feeds
count too), and d is how much a held-out row's margin for the original's pick moved in
the candidate (its top-1 logit minus the best other). A candidate that keeps its
decisions by shrinking every margin (pruning often does: task_mobilenetv3 at 70 %, mean
d -2.0 logits) flips the rows whose margins are small, which 8 held-out rows rarely
hold. Measured against the scores of scripts/bench_task.py on 24 compressed models of 5
classifier and tagger models (docs/accuracy-target.md): every loss over one point missed
the target (the older figure passed all but one); under the truth by at most 0.82
points where it was over 3, 0.27 near the target; it over-counts where margins only
shrink uniformly (open_nsfw clustered to 2 bits: 3.75 points estimated, none of 80
photos changed).

A tagger's padding positions never change and must not dilute the count (`padding_masks`):
positions of an integer input aligned with the output's position axis that belong to the
trailing run of the pad value (lac_bigru: 384 held-out positions, 239 real).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

MARGIN_ROWS = 4096  # calibration rows whose margins are kept (evenly spaced beyond this)
_LOG_FLOOR = 1e-30  # probabilities of 0 as log(1e-30)
_GRID = 1024  # cells of the margin density's integration grid


@dataclass(frozen=True)
class RowEvidence:
    """What the estimate needs beyond the check's own outputs."""

    margins: np.ndarray  # the original's top-1 margins on every calibration row (real ones)
    real: tuple[np.ndarray | None, ...] = ()  # per check feed: the output's real rows (None: all)
    time_axis: int = 1  # the output's position axis (taggers)


def class_logits(scores: np.ndarray) -> np.ndarray:
    """Scores as logits, class axis last: probabilities as their logs, the rest as given
    (log-probabilities and logits differ from logits only by a per-row shift)."""
    values = np.asarray(scores, dtype=np.float64)
    if values.size and values.min() >= 0 and values.max() <= 1 + 1e-6:
        sums = values.sum(-1)
        if np.allclose(sums, 1.0, atol=1e-3):
            return np.log(np.maximum(values, _LOG_FLOOR))
    return values


def top_margin(logits: np.ndarray, picks: np.ndarray | None = None) -> np.ndarray:
    """Per row of [rows, C] logits: the logit of `picks` (default: the argmax) minus the best
    other class's (negative where another class wins)."""
    if picks is None:
        picks = logits.argmax(-1)
    rows = np.arange(len(logits))
    picked = logits[rows, picks]
    others = logits.copy()
    others[rows, picks] = -np.inf
    return np.asarray(picked - others.max(-1))


def rows_of(scores: np.ndarray, real: np.ndarray | None) -> np.ndarray:
    """[rows, C] logits of one feed's output, only its real positions when a mask is given."""
    logits = class_logits(scores)
    if real is not None and real.shape == logits.shape[:-1]:
        return logits[real]
    return logits.reshape(-1, logits.shape[-1])


def margin_moves(reference: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """d per row of [rows, C] logits: how the margin of the original's pick moved from
    `reference` to `candidate` (finite rows only)."""
    picks = reference.argmax(-1)
    moved = top_margin(candidate, picks) - top_margin(reference, picks)
    return np.asarray(moved[np.isfinite(moved)])


def estimated_flips(moves: np.ndarray, margins: np.ndarray) -> tuple[float, float, float]:
    """(points of top-1 decisions expected to change over rows with `margins`, mean and
    spread of the check rows' margin `moves`)."""
    if not len(moves) or not len(margins):
        return 0.0, 0.0, 0.0
    mean = float(moves.mean())
    spread = float(moves.std(ddof=1)) if len(moves) > 1 else abs(mean)
    return 100.0 * flip_share(np.asarray(margins, dtype=np.float64), mean, spread), mean, spread


def flip_share(margins: np.ndarray, mean: float, spread: float) -> float:
    """P(m + d < 0), d ~ Normal(mean, spread), m from the density of `margins`, smoothed.

    The plain mean over the rows of P(m_i + d < 0) is unbiased but, where the spread is
    small against the margins' spacing, ruled by whether one row happens to be a near tie
    (one of 32 rows at a tie is 1.6 points by itself). So the margins' density is a
    Gaussian kernel estimate reflected at 0 (margins are >= 0; Silverman's bandwidth),
    integrated cell by cell against the normal tail.
    """
    margins = margins[np.isfinite(margins)]
    if not len(margins):
        return 0.0
    if spread <= 0.0:
        return float(np.mean(margins + mean < 0))
    quartiles = np.percentile(margins, [25, 75])
    scale = min(float(margins.std()), float(quartiles[1] - quartiles[0]) / 1.34)
    width = 0.9 * scale * len(margins) ** -0.2
    if width <= 0.0:
        return float(np.mean(_normal_cdf((-margins - mean) / spread)))
    # only where the tail is not negligible (8 spreads past the mean shift): cells of
    # piecewise constant density, the normal tail integrated exactly over each
    top = min(float(margins.max()) + 4 * width, -mean + 8 * spread)
    if top <= 0.0:
        return 0.0
    edges = np.linspace(0.0, top, _GRID + 1)
    middle = 0.5 * (edges[1:] + edges[:-1])
    density = np.zeros_like(middle)
    for start in range(0, len(margins), 1024):
        chunk = margins[start : start + 1024, None]
        density += np.exp(-0.5 * ((middle - chunk) / width) ** 2).sum(0)
        density += np.exp(-0.5 * ((middle + chunk) / width) ** 2).sum(0)
    density /= len(margins) * width * math.sqrt(2 * math.pi)
    held = _tail_integral((edges + mean) / spread) * spread  # integral of Phi(-u) from u on
    return float(min(1.0, np.sum(density * (held[:-1] - held[1:]))))


def _tail_integral(u: np.ndarray) -> np.ndarray:
    """The integral of Phi(-t) dt from u to infinity: phi(u) - u Phi(-u)."""
    return np.exp(-0.5 * u * u) / math.sqrt(2 * math.pi) - u * _normal_cdf(-u)


def _normal_cdf(z: np.ndarray) -> np.ndarray:
    erfc = np.frompyfunc(math.erfc, 1, 1)
    return np.asarray(0.5 * erfc(-z / math.sqrt(2.0)), dtype=np.float64)


def string_frames(scores: np.ndarray, time_axis: int, batch_axis: int) -> np.ndarray:
    """A CTC output's frames as [strings, T, C] logits (one decoded string per row)."""
    frames = np.moveaxis(np.asarray(scores), (batch_axis, time_axis), (0, 1))
    return class_logits(frames)


def string_margins(frames: np.ndarray) -> np.ndarray:
    """[strings, T] top-1 margins of [strings, T, C] logits."""
    strings, steps, classes = frames.shape
    return top_margin(frames.reshape(-1, classes)).reshape(strings, steps)


def estimated_string_changes(moves: np.ndarray, margins: np.ndarray) -> tuple[float, float, float]:
    """(points of decoded strings expected to change over strings whose frame margins are
    the rows of `margins` [strings, T], mean and spread of the check frames' `moves`).

    A string changes when any of its frames does: 1 - prod_t (1 - P(m_t + d < 0)), d ~
    Normal(mean, spread) as for a classifier's rows, each frame its own margin. Not
    smoothed: a string has tens of frames, so the near ties that rule the estimate are
    sampled far more densely than a classifier's 32 rows (captcha_crnn: 1,280 frames).
    Every frame counts, though a flip between a character and the blank next to it often
    leaves the text as it was: the estimate errs high where changes are rare
    (docs/accuracy-target.md: task_crnn int8 0.68 points for 0.39 measured on 256 strings;
    captcha_crnn with its convolutions float 1.56 for 0 of 256), close where they are not
    (captcha_crnn int8 4.05 for 4.30; pruned 30 %, 14.7 for 12.5).
    """
    moves = moves[np.isfinite(moves)]
    if not len(moves) or not margins.size:
        return 0.0, 0.0, 0.0
    mean = float(moves.mean())
    spread = float(moves.std(ddof=1)) if len(moves) > 1 else abs(mean)
    margins = np.where(np.isfinite(margins), margins, np.inf).astype(np.float64)
    if spread <= 0.0:
        flips = (margins + mean < 0).astype(np.float64)
    else:
        flips = _normal_cdf((-margins - mean) / spread)
    kept = np.log1p(-np.minimum(flips, 1.0 - 1e-12)).sum(axis=1)
    return 100.0 * float(np.mean(-np.expm1(kept))), mean, spread


@dataclass(frozen=True)
class Padding:
    """Which input marks a tagger's padding, and with what value."""

    input: str
    pad: int


def find_padding(
    feeds: Sequence[Mapping[str, np.ndarray]], outputs: Sequence[np.ndarray], time_axis: int
) -> Padding | None:
    """The input that marks padding in `feeds` (see padding_masks), or None."""
    if not feeds or len(feeds) != len(outputs) or any(np.ndim(o) != 3 for o in outputs):
        return None
    for name in feeds[0]:
        sequences = [_laid(f.get(name), o, time_axis) for f, o in zip(feeds, outputs, strict=True)]
        if any(s is None for s in sequences):
            continue
        pad = _pad_value([s for s in sequences if s is not None])
        if pad is not None:
            return Padding(name, pad)
    return None


def real_positions(
    padding: Padding | None, feed: Mapping[str, np.ndarray], output: np.ndarray, time_axis: int
) -> np.ndarray | None:
    """The output's real positions in one feed (its leading axes' layout), None: all."""
    seq = _laid(feed.get(padding.input), output, time_axis) if padding is not None else None
    if seq is None or padding is None:
        return None
    real = np.ones(seq.shape, dtype=bool)
    for row, values in enumerate(seq):
        end = len(values)
        while end > 0 and values[end - 1] == padding.pad:
            end -= 1
        real[row, end:] = False
    return real if time_axis == 1 else real.T


def padding_masks(
    feeds: Sequence[Mapping[str, np.ndarray]],
    outputs: Sequence[np.ndarray],
    time_axis: int,
) -> tuple[np.ndarray | None, ...]:
    """Per feed, the output's real positions ([batch, positions] layout of the output's
    leading axes), or None for every feed when no input marks padding.

    An input marks padding when it is an integer sequence of the output's leading shape
    (or its transpose) in every feed, and rows ending in one value (the pad) end in a run
    of it: that value ends at least a quarter of the rows and a run of two somewhere.
    """
    padding = find_padding(feeds, outputs, time_axis)
    if padding is None:
        return tuple(None for _ in outputs)
    return tuple(
        real_positions(padding, f, o, time_axis) for f, o in zip(feeds, outputs, strict=True)
    )


def _laid(values: np.ndarray | None, output: np.ndarray, time_axis: int) -> np.ndarray | None:
    """An integer input of the output's leading shape (or its transpose) as [rows, positions]
    along the output's position axis; None when it is not one."""
    if values is None or np.ndim(output) != 3:
        return None
    transposed = _aligned(np.asarray(values), np.shape(output)[:2])
    if transposed is None:
        return None
    laid = np.asarray(values).T if transposed else np.asarray(values)
    return laid if time_axis == 1 else laid.T


def _aligned(values: np.ndarray, shape: tuple[int, ...]) -> bool | None:
    """False: `values` has the output's leading shape; True: its transpose; None: neither."""
    if values.dtype.kind not in "iu" or values.ndim != 2:
        return None
    if values.shape == tuple(shape):
        return False
    if values.shape == tuple(shape)[::-1]:
        return True
    return None


def _pad_value(sequences: Sequence[np.ndarray]) -> int | None:
    last = np.concatenate([s[:, -1] for s in sequences if s.size])
    if not last.size:
        return None
    values, counts = np.unique(last, return_counts=True)
    pad = values[counts.argmax()]
    if counts.max() < 0.25 * last.size:
        return None
    run_of_two = any(
        bool(np.any((s[:, -1] == pad) & (s[:, -2] == pad))) for s in sequences if s.shape[1] > 1
    )
    return int(pad) if run_of_two else None
