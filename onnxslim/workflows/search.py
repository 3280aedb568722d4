"""`onnxslim search`: run a grid of recipe variants and keep the best one that passes the gates.

Each candidate is the recipe with some step options set (the `[search]` axes,
every combination), run by onnxslim.workflows.run exactly as `onnxslim run` would: the
winner's bytes are what `run` writes for that configuration. Candidates run in
parallel on local processes (spawned, so ONNX Runtime's thread pools are never
forked), or as Ray tasks (`ray_address`), for searches that outgrow one machine.
Ray tasks get the model and data files through Ray's object store, so the cluster
needs no shared file system.

Choice: among the candidates that pass every gate, the smallest output file
(`objective = "smallest"`, deterministic) or the lowest latency ratio (`fastest`,
a timing: reruns may pick another); ties go to the earlier candidate. When none
passes, the one that passes most gates is kept (then by the objective) and the
report says so; the CLI exits 1.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir

from onnxslim import io
from onnxslim.errors import OnnxSlimError, PassFailed, UsageError
from onnxslim.images import image_files
from onnxslim.recipe import Recipe, load_recipe
from onnxslim.report import RunReport
from onnxslim.workflows.run import RecipeSpec, check_data, recipe_data, run_recipe

Progress = Callable[[str], None]
MAX_DEFAULT_JOBS = 4


def candidates(recipe: Recipe) -> list[dict[str, Any]]:
    """Every combination of the axes, in order: [{"quantize.method": "minmax", ...}, ...]."""
    axes = recipe.search.get("axes", {})
    keys = list(axes)
    return [dict(zip(keys, values, strict=True)) for values in itertools.product(*axes.values())]


def variant(recipe: Recipe, config: dict[str, Any]) -> Recipe:
    """The recipe with one candidate's options set, and no [search] table."""
    assignments = {tuple(key.split(".", 1)): value for key, value in config.items()}
    return dataclasses.replace(recipe.with_options(assignments), search={})  # type: ignore[arg-type]


def default_jobs(count: int) -> int:
    return max(1, min(count, os.cpu_count() or 1, MAX_DEFAULT_JOBS))


def search_recipe(
    recipe: RecipeSpec,
    source: str | os.PathLike[str],
    *,
    calib: str | None = None,
    eval_data: str | None = None,
    jobs: int | None = None,
    ray_address: str | None = None,
    progress: Progress | None = None,
    image_preprocess: str | None = None,
    notice: Progress | None = None,
) -> RunReport:
    """Run every candidate; returns the chosen candidate's RunReport with a `search` section.

    Image folders are settled here once (refused before any candidate runs when the
    model contradicts a guess; one `notice` line each); the candidates read them the same.
    """
    say = progress or (lambda _m: None)
    recipe = load_recipe(recipe).with_data(calib, eval_data, image_preprocess)
    if not recipe.search:
        raise UsageError(
            f"{recipe.source}: search: the recipe has no [search] table "
            "(for example [search] bits = [2, 4])"
        )
    check_data(recipe)
    source = Path(source)
    if not source.is_file():
        raise UsageError(f"{source}: no such file")
    folders = [p for p in (recipe.calib, recipe.eval) if p and image_files(Path(p))]
    if folders or recipe.image_preprocess is not None:
        for line in recipe_data(recipe, io.load(source)).lines():
            (notice or say)(line)
    configs = candidates(recipe)
    variants = [variant(recipe, c) for c in configs]  # validates every value up front
    jobs = jobs or default_jobs(len(configs))
    start = time.perf_counter()
    say(f"{len(configs)} candidates on {'Ray' if ray_address else f'{jobs} process(es)'}")
    if ray_address:
        results = _run_ray(variants, source, ray_address, jobs, say)
    else:
        results = _run_local(variants, source, jobs, say)
    results.sort(key=lambda r: r["index"])
    return _choose(recipe, configs, results, source, time.perf_counter() - start)


def evaluate_candidate(
    index: int, recipe: Recipe, model_path: str | None, blobs: dict[str, bytes] | None = None
) -> dict[str, Any]:
    """Run one candidate (in a worker); returns its report object and model bytes.

    With `blobs` (Ray), the model and data arrive as bytes and are written to a
    private temporary folder first.
    """
    with tempfile.TemporaryDirectory(prefix="onnxslim-candidate-") as tmp:
        if blobs is not None:
            files = {}
            for key, data in blobs.items():
                path = Path(tmp) / f"{key}{'.onnx' if key == 'model' else '.npz'}"
                path.write_bytes(data)
                files[key] = str(path)
            recipe = dataclasses.replace(
                recipe, calib=files.get("calib", recipe.calib), eval=files.get("eval", recipe.eval)
            )
            model_path = files["model"]
        try:
            outcome = run_recipe(recipe, model_path)  # type: ignore[arg-type]
        except OnnxSlimError as exc:
            return {
                "index": index,
                "error": str(exc),
                "exit_code": exc.exit_code,
                "report": getattr(exc, "report", None),
                "model": None,
            }
        report = outcome.report
        report.model = None  # the bytes travel instead of the object graph
        return {
            "index": index,
            "error": None,
            "report": report,
            "model": io.model_to_bytes(outcome.model),
        }


def _run_local(
    variants: list[Recipe], source: Path, jobs: int, say: Progress
) -> list[dict[str, Any]]:
    if jobs == 1:
        return [evaluate_candidate(i, r, str(source)) for i, r in enumerate(variants)]
    results = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [
            pool.submit(evaluate_candidate, i, r, str(source)) for i, r in enumerate(variants)
        ]
        for future in as_completed(futures):
            results.append(future.result())
            say(f"candidate {results[-1]['index']} done ({len(results)}/{len(variants)})")
    return results


def _run_ray(
    variants: list[Recipe], source: Path, address: str, jobs: int, say: Progress
) -> list[dict[str, Any]]:
    try:
        import ray  # optional and heavy (~1 s to import): only searches on Ray need it
    except ImportError as exc:
        raise UsageError("--ray needs Ray: pip install 'onnxslim[ray]'") from exc

    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        }
        with _neutral_working_directory() as neutral:
            if address == "local":
                ray.init(num_cpus=jobs, **options)
            elif address == "auto":
                try:
                    ray.init(address="auto", **options)
                except ConnectionError:
                    ray.init(num_cpus=jobs, **options)
            else:
                try:
                    ray.init(address=address, **options)
                except Exception as exc:  # Ray raises several types for a bad address
                    raise UsageError(
                        f"--ray {address}: cannot connect to a Ray cluster: {exc}"
                    ) from exc
        started = True
    try:
        blobs = {"model": source.read_bytes()}
        recipe = variants[0]
        for key in ("calib", "eval"):
            path = getattr(recipe, key)
            if path is not None:
                if not Path(path).is_file():
                    raise UsageError(
                        f"--ray: data.{key} must be a file to ship to the "
                        f"cluster, got the folder {path}"
                    )
                blobs[key] = Path(path).read_bytes()
        shared = ray.put(blobs)
        task = ray.remote(num_cpus=1)(_ray_candidate)
        refs = [task.remote(i, r, shared) for i, r in enumerate(variants)]
        say(f"{len(refs)} Ray tasks submitted")
        return list(ray.get(refs))
    finally:
        if started:
            ray.shutdown()
            shutil.rmtree(neutral, ignore_errors=True)


@contextlib.contextmanager
def _neutral_working_directory() -> Iterator[str]:
    """Start Ray from an empty folder: Ray puts the driver's working directory first on
    its workers' sys.path, and from a checkout of this project that directory holds an
    `onnxslim/` folder without its passes (installed from passes/), which would shadow
    the installed package in every worker. The folder outlives the Ray session (its
    workers may start in it); the caller removes it after shutdown."""
    previous = os.getcwd()
    empty = tempfile.mkdtemp(prefix="onnxslim-ray-")
    os.chdir(empty)
    try:
        yield empty
    finally:
        os.chdir(previous)


def _ray_candidate(index: int, recipe: Recipe, blobs: dict[str, bytes]) -> dict[str, Any]:
    return evaluate_candidate(index, recipe, None, blobs)


def _choose(
    recipe: Recipe,
    configs: list[dict[str, Any]],
    results: list[dict[str, Any]],
    source: Path,
    seconds: float,
) -> RunReport:
    objective = recipe.search["objective"]
    rows = []
    for result, config in zip(results, configs, strict=True):
        report = result["report"]
        row: dict[str, Any] = {"index": result["index"], "config": config, "passed": False}
        if result["error"] is not None or report is None or result["model"] is None:
            row["reason"] = result["error"] or "no report"
            rows.append(row)
            continue
        final = report.final
        metric_name = "top1" if final.top1 is not None else "agreement"
        row.update(
            passed=report.passed,
            file_bytes=report.output["bytes"],
            metric=getattr(final, metric_name),
            metric_name=metric_name,
            latency_ratio=final.latency_ratio,
            parity_error=final.parity_error,
            gates_passed=sum(g.passed for g in report.gates),
            reason="; ".join(f"{g.name}: {g.reason}" for g in report.failed_gates),
        )
        rows.append(row)
    usable = [r for r in rows if "file_bytes" in r]
    if not usable:
        reasons = "; ".join(f"#{r['index']}: {r['reason']}" for r in rows[:3])
        if all(r.get("exit_code") == 2 for r in results):  # the same bad input everywhere
            raise UsageError(f"search: every candidate failed ({reasons})")
        raise PassFailed(f"search: every candidate failed ({reasons})")

    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        latency = row["latency_ratio"] if row["latency_ratio"] is not None else float("inf")
        order = (
            (row["file_bytes"], latency)
            if objective == "smallest"
            else (latency, row["file_bytes"])
        )
        return (not row["passed"], -row["gates_passed"], *order, row["index"])

    winner = min(usable, key=key)
    chosen = results[winner["index"]]
    report = chosen["report"]
    report.input["path"] = str(source)
    report.model = ir.serde.deserialize_model(onnx.load_from_string(chosen["model"]))
    report.search = {
        "objective": objective,
        "axes": recipe.search["axes"],
        "winner": winner["index"],
        "winner_config": winner["config"],
        "winner_passed": winner["passed"],
        "metric_name": winner.get("metric_name"),
        "candidates": rows,
        "seconds": round(seconds, 3),
        "note": None
        if winner["passed"]
        else "no candidate passed every gate: the one passing most gates was kept",
        "recipe": recipe.to_dict(),  # the grid; report.recipe is the winner's own recipe
    }
    return report
