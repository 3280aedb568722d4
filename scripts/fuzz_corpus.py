"""Generate the hostile-input corpus (seeded) into a cache folder, not the repository.

    python scripts/fuzz_corpus.py                     # ~/.cache/onnxslim-fuzz/corpus
    python scripts/fuzz_corpus.py --out DIR --seed 1 --no-big

Layout: ROOT/secret.bin (outside every case folder), ROOT/FAMILY/CASE/model.onnx
(+ calib.npz, + external data files), ROOT/manifest.json listing every case with
its family, what a correct tool does with it (valid / invalid / either, see
fuzz_build) and why. Labels are checked against the references where that is safe:
a "valid" case onnx.checker (full check) or ONNX Runtime cannot take becomes
"either", an "invalid" one both take becomes "either", and the change is noted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fuzz_fam_bombs  # noqa: E402
import fuzz_fam_bytes  # noqa: E402
import fuzz_fam_external  # noqa: E402
import fuzz_fam_graph  # noqa: E402
import fuzz_fam_valid  # noqa: E402
from fuzz_build import Case, Writer, random_feed, write_secret  # noqa: E402

DEFAULT_ROOT = Path("~/.cache/onnxslim-fuzz/corpus").expanduser()
FAMILIES = ("bytes", "structure", "lies", "external", "bombs", "valid")


def family_cases(family: str, rng: np.random.Generator, big: bool) -> Iterator[tuple]:
    if family == "bytes":
        return fuzz_fam_bytes.cases(rng)
    if family == "structure":
        return fuzz_fam_graph.structure(rng)
    if family == "lies":
        return fuzz_fam_graph.lies(rng)
    if family == "external":
        return fuzz_fam_external.cases(rng)
    if family == "bombs":
        return fuzz_fam_bombs.cases(rng, big=big)
    if family == "valid":
        return fuzz_fam_valid.cases(rng)
    raise ValueError(f"unknown family {family!r}")


def reference_verdict(path: Path, run: bool) -> str | None:
    """None when onnx.checker (full) and ORT (load, and one run if `run`) take the model."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        if run:
            model = onnx.load(str(path), load_external_data=False)
            inits = {t.name for t in model.graph.initializer}
            rng = np.random.default_rng(0)
            feeds = {
                vi.name: random_feed(vi, rng) for vi in model.graph.input if vi.name not in inits
            }
            session.run(None, feeds)
    except Exception as exc:  # the reference's refusal is the information
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
    return None


def check_label(case: Case, path: Path) -> None:
    """Reconcile a hand-written label with what the references do (safe families only)."""
    if case.expect == "auto":
        case.expect = fuzz_fam_bytes.classify(path.read_bytes())
        return
    if case.family in ("bytes", "bombs", "external") or case.heavy:
        return
    refusal = reference_verdict(path, run=case.expect == "valid")
    if case.expect == "valid" and refusal:
        case.expect, case.note = "either", f"{case.note} (references refuse: {refusal})"
    elif case.expect == "invalid" and not refusal:
        case.expect, case.note = "either", f"{case.note} (references accept it)"


def plan(
    *, seed: int = 0, big: bool = True, families: tuple[str, ...] = FAMILIES
) -> list[tuple[Case, Writer]]:
    """Every case and its writer, in a fixed order (nothing written yet)."""
    rng = np.random.default_rng(seed)
    planned = []
    for family in families:
        for case, write in family_cases(family, rng, big):
            case.path = f"{family}/{case.id}"
            planned.append((case, write))
    return planned


def generate(
    root: Path = DEFAULT_ROOT,
    *,
    seed: int = 0,
    big: bool = True,
    families: tuple[str, ...] = FAMILIES,
    only: set[str] | None = None,
    verbose: bool = False,
) -> list[Case]:
    """Write every case (or those whose path is in `only`) under `root`, emptied first."""
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    write_secret(root)
    cases: list[Case] = []
    for case, write in plan(seed=seed, big=big, families=families):
        if only is not None and case.path not in only:
            continue
        folder = root / case.path
        case.calib = bool(write(folder))
        check_label(case, folder / "model.onnx")
        cases.append(case)
        if verbose:
            print(f"{case.path:40s} {case.expect:8s} {case.note}", flush=True)
    manifest = {"seed": seed, "cases": [dataclasses.asdict(c) for c in cases]}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return cases


def load_manifest(root: Path = DEFAULT_ROOT) -> list[Case]:
    data = json.loads((root / "manifest.json").read_text())
    return [Case(**entry) for entry in data["cases"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_ROOT)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-big", action="store_true", help="skip the 30k-300k node graphs")
    parser.add_argument("--family", action="append", choices=FAMILIES)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args()
    cases = generate(
        args.out,
        seed=args.seed,
        big=not args.no_big,
        families=tuple(args.family or FAMILIES),
        verbose=args.verbose,
    )
    counts: dict[tuple[str, str], int] = {}
    for case in cases:
        counts[case.family, case.expect] = counts.get((case.family, case.expect), 0) + 1
    print(f"{len(cases)} cases in {args.out}")
    for family in dict.fromkeys(c.family for c in cases):
        parts = [f"{e} {counts.get((family, e), 0)}" for e in ("valid", "invalid", "either")]
        print(f"  {family:10s} " + ", ".join(parts))


if __name__ == "__main__":
    main()
