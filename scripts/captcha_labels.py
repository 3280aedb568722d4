"""Does the label-free target predict the task metric? The captcha reader, with labels.

The devmodels' captchas (../shared/devmodels/inputs.py) are drawn from a seeded RNG, so
their text can be recovered by replaying the generator with a recording RNG. This script
quantizes captcha_crnn with `onnxslim quantize`'s defaults (32 calibration feeds,
seed 0), runs float and int8 on N evaluation captchas (seed 1), and prints, side by side:

  disagreement        captchas int8 decodes differently from float (what the benchmark
                      scores: exact-string agreement with float)
  expected loss       the target's figure: each changed sequence weighted by how sure
                      float was of the frame that changed it (onnxslim.decisions.ctc_loss)
  labelled change     exact-match accuracy against the true text, int8 minus float

    python scripts/captcha_labels.py [--eval 256]     (feeds of 2 captchas each)

The class -> character map is read from float's own correct-length readings (majority
vote per class): the devmodel ships no vocabulary.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from onnxslim.decisions import ctc_decode, ctc_loss
from onnxslim.runtime import Session

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO.parent / "shared" / "devmodels"))
import inputs  # type: ignore[import-not-found]  # noqa: E402

MODEL = Path("~/.cache/devmodels/captcha_crnn.onnx").expanduser()
BLANK = 36


class RecordingRng:
    """A Generator stand-in that records the captcha texts `_captcha` draws."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng, self.texts = rng, []  # type: ignore[var-annotated]

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rng, name)

    def choice(self, items: Any, *args: Any, **kwargs: Any) -> Any:
        drawn = self.rng.choice(items, *args, **kwargs)
        if isinstance(items, list) and len(items) == len(inputs._ALPHABET):
            self.texts.append("".join(drawn))
        return drawn


def texts(feeds: int, seed: int) -> list[str]:
    """The true text of each captcha of make_feeds('captcha_crnn', feeds, seed)."""
    out: list[str] = []
    for i in range(feeds):
        rng = RecordingRng(inputs._rng("captcha_crnn", seed, i))
        for _ in range(2):  # two captchas per feed, as inputs._one draws them
            inputs._captcha(rng)
        out += rng.texts
    return out


def logits(model: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    session = Session(model)
    return np.concatenate([session.run(f)["logits"] for f in feeds], axis=1)  # [T, N, C]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--eval", type=int, default=256, help="evaluation feeds (2 captchas)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="captcha-labels-"))
    calib = inputs.make_feeds("captcha_crnn", 32, seed=0)
    np.savez(work / "calib.npz", image=np.stack([f["image"] for f in calib]))
    int8 = work / "int8.onnx"
    subprocess.run(
        ["onnxslim", "quantize", str(MODEL), "-o", str(int8), "--calib", str(work / "calib.npz")],
        check=True,
        capture_output=True,
        cwd=work,
    )
    feeds = inputs.make_feeds("captcha_crnn", args.eval, seed=1)
    ref, cand = logits(MODEL, feeds), logits(int8, feeds)
    truth = texts(args.eval, seed=1)
    floats, int8s = ctc_decode(ref, BLANK), ctc_decode(cand, BLANK)
    votes: dict[int, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for text, read in zip(truth, floats, strict=True):
        if len(text) == len(read):
            for char, cls in zip(text, read, strict=True):
                votes[cls][char] += 1
    chars = {cls: counter.most_common(1)[0][0] for cls, counter in votes.items()}

    def accuracy(reads: list[tuple[int, ...]]) -> float:
        spelled = ["".join(chars.get(c, "?") for c in r) for r in reads]
        return 100.0 * float(np.mean([s == t for s, t in zip(spelled, truth, strict=True)]))

    lost, changed, total = ctc_loss([ref], [cand], 0, 1, BLANK)
    print(f"captchas: {total}; float exact match vs the true text {accuracy(floats):.2f} %")
    print(f"disagreement with float: {100 * changed / total:.2f} points ({changed} captchas)")
    print(f"expected loss (the target's figure): {100 * lost / total:.2f} points")
    print(f"labelled exact-match change: {accuracy(int8s) - accuracy(floats):+.2f} points")


if __name__ == "__main__":
    main()
