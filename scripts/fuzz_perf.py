"""Time fold-constants and eliminate-no-ops on generated huge graphs (linear or not?).

    python scripts/fuzz_perf.py                  # chains of 30k, 100k, 300k nodes
    python scripts/fuzz_perf.py --sizes 10000,30000 --passes fold-constants
    python scripts/fuzz_perf.py --from-dir /tmp/old   # fold.py/eliminate.py of another revision

Graphs: a Relu chain, a chain of Mul by a scalar initializer (one initializer per
node), and one Sum of N small initializers. Each pass runs on a fresh in-memory
model (loading is not timed). A linear pass takes ~10x the time for 10x the nodes.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from pathlib import Path

import onnx_ir as ir

sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_fam_bombs import _chain, _many_inits  # noqa: E402

from onnxslim.passes.eliminate import EliminateNoOps  # noqa: E402
from onnxslim.passes.fold import FoldConstants  # noqa: E402

PASSES: dict[str, type] = {"fold-constants": FoldConstants, "eliminate-no-ops": EliminateNoOps}
GRAPHS = {
    "relu-chain": lambda n: _chain(n)(),
    "mul-chain": lambda n: _chain(n, with_init=True)(),
    "sum-inits": lambda n: _many_inits(n)(),
}


def load_passes(folder: Path) -> None:
    """Use FoldConstants / EliminateNoOps from `folder`/{fold,eliminate}.py (a before/after run)."""
    for key, (name, cls) in {
        "fold-constants": ("fold", "FoldConstants"),
        "eliminate-no-ops": ("eliminate", "EliminateNoOps"),
    }.items():
        spec = importlib.util.spec_from_file_location(f"perf_{name}", folder / f"{name}.py")
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
        PASSES[key] = getattr(module, cls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="30000,100000,300000")
    parser.add_argument("--passes", default=",".join(PASSES))
    parser.add_argument("--graphs", default=",".join(GRAPHS))
    parser.add_argument("--from-dir", type=Path)
    args = parser.parse_args()
    if args.from_dir:
        load_passes(args.from_dir)
    print("| graph | nodes | pass | seconds | modified |")
    print("|---|---|---|---|---|")
    for graph in args.graphs.split(","):
        for size in map(int, args.sizes.split(",")):
            proto = GRAPHS[graph](size)
            for name in args.passes.split(","):
                model = ir.serde.deserialize_model(proto)
                start = time.perf_counter()
                result = PASSES[name]()(model)
                seconds = time.perf_counter() - start
                print(
                    f"| {graph} | {size:,} | {name} | {seconds:.1f} | {result.modified} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
