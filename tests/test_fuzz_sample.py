"""A seeded sample of the fuzz corpus through the most used commands, judged like scripts/fuzz.py.

Each family contributes PER_FAMILY cases (huge graphs left to the script); each
case runs through `optimize` and `inspect` in a forked, memory-capped child with a
timeout. A run passes with exit 0 and a loadable output (input not invalid), or one
line, exit 2 and nothing written. Known defects another change is fixing are xfail
with their cause, strictly: when the fix lands, the test turns red and the marker goes.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import fuzz  # noqa: E402
import fuzz_corpus  # noqa: E402
from fuzz_judge import PASS  # noqa: E402

PER_FAMILY = 12
SEED = 0
COMMANDS = ("optimize", "inspect")
TIMEOUT = 15.0  # CPU seconds (the judge sets RLIMIT_CPU; wall time is 6x)
MEM_MB = 3072

# Defects still open, by cause: "family/case:command". Strict xfail, so a fix turns its
# entries red and they must go. Measured on this sample, nothing guessed; empty since the
# load checks (typed data vs dims) and the 10 s probe budget closed the last three.
KNOWN_CAUSES: dict[str, list[str]] = {}
KNOWN = {
    tuple(entry.split(":")): cause for cause, entries in KNOWN_CAUSES.items() for entry in entries
}


def _sample() -> list[Any]:
    planned = [case for case, _ in fuzz_corpus.plan(seed=SEED, big=False)]
    return fuzz.sample(planned, PER_FAMILY, seed=SEED)


CASES = _sample()


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, Any]]:
    """Write the sampled cases, run every (case, command) on two warm workers."""
    root = tmp_path_factory.mktemp("fuzz") / "corpus"
    cases = fuzz_corpus.generate(root, seed=SEED, big=False, only={c.path for c in CASES})
    scratch = tmp_path_factory.mktemp("runs")
    jobs = fuzz.make_jobs(
        root, cases, list(COMMANDS), timeout=TIMEOUT, mem_mb=MEM_MB, scratch=str(scratch)
    )
    return {(r["case"], r["command"]): r for r in fuzz.run(jobs, workers=2)}


def _params() -> list[Any]:
    params = []
    for case in CASES:
        for command in COMMANDS:
            cause = KNOWN.get((case.path, command))
            marks = [pytest.mark.xfail(strict=True, reason=cause)] if cause else []
            param_id = f"{case.path}:{command}"
            params.append(pytest.param(case.path, command, marks=marks, id=param_id))
    return params


@pytest.mark.parametrize(("case", "command"), _params())
def test_fuzz_case(records: dict[tuple[str, str], dict[str, Any]], case: str, command: str) -> None:
    record = records[case, command]
    assert record["verdict"] in PASS, (
        f"{case} [{record['expect']}] {command}: {record['verdict']}: {record['detail']}"
    )


def test_sample_covers_every_family() -> None:
    """The sample keeps every family and both kinds of expectation."""
    families = {c.family for c in CASES}
    assert families == set(fuzz_corpus.FAMILIES)
    assert len(CASES) >= PER_FAMILY * (len(families) - 1)


def test_labels_follow_what_the_references_do(tmp_path: Path) -> None:
    """Cases whose first label the whole-corpus run proved wrong: a custom op in an imported
    domain is legal ONNX (inspect may describe it); 32 nested Ifs pass protobuf's depth
    limit (onnx.load and ORT refuse it); 30 nested Ifs are valid but the ORT format cannot
    hold them, so only export may refuse (its jobs alone are judged as "either")."""
    planned = {case.path: case for case, _ in fuzz_corpus.plan(seed=SEED, big=False)}
    assert planned["structure/unknown-domain-imported"].expect == "either"
    assert planned["bombs/if-nested-32"].expect == "invalid"
    nested = planned["bombs/if-nested-30"]
    assert nested.expect == "valid" and nested.either_for == ["export"]
    jobs = fuzz.make_jobs(tmp_path, [nested], ["optimize", "export"], timeout=1, mem_mb=1)
    assert [job["expect"] for job in jobs] == ["valid", "either"]


def test_generated_string_calibration_is_read_without_pickle(tmp_path: Path) -> None:
    """The corpus wrote string inputs' calibration as object arrays, which need pickle and
    which the data reader refuses (valid/dtype-string was judged refused-valid): they are
    numpy unicode now, and the reader streams them."""
    import onnx_ir as ir
    from fuzz_build import write_calib
    from onnx import TensorProto, helper

    from onnxslim.calibration import open_feeds

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "strings",
        [helper.make_tensor_value_info("x", TensorProto.STRING, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [2, 3])],
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert write_calib(proto, tmp_path / "calib.npz")
    feeds = list(open_feeds(tmp_path / "calib.npz", ir.serde.deserialize_model(proto)))
    assert len(feeds) == 4 and feeds[0]["x"].shape == (2, 3) and feeds[0]["x"].dtype.kind == "U"


def test_cpu_limit_signal_is_a_hang_not_a_crash() -> None:
    """bombs/chain-300k through optimize ended on SIGXCPU with rusage at 29.3 of 30 CPU
    seconds and was judged a crash: SIGXCPU comes only from the CPU limit."""
    from fuzz_judge import judge

    result = {
        "exit": -24,
        "timeout": False,
        "seconds": 157.0,
        "cpu": 29.3,
        "cpu_limit": 30,
        "stderr": "",
        "leaked": False,
        "changed": False,
        "leftover_tmp": [],
        "outputs": [],
        "check": None,
    }
    assert judge("valid", "optimize", result)[0] == "hang"
    assert judge("valid", "optimize", {**result, "exit": -9, "cpu": 3.0})[0] == "crash"


def test_onnxruntime_state_file_is_not_a_leftover() -> None:
    """`import onnxruntime` in a fresh process writes TMPDIR/.ses (every peer run left it);
    any other file left in the temp folder is still a leftover."""
    from fuzz_judge import judge

    result = {
        "exit": 0,
        "timeout": False,
        "seconds": 1.0,
        "cpu": 1.0,
        "cpu_limit": 30,
        "stderr": "",
        "leaked": False,
        "changed": False,
        "leftover_tmp": [".ses"],
        "outputs": ["model.onnx"],
        "check": "ok",
    }
    assert judge("valid", "optimize", result, peer=True)[0] == "ok"
    assert judge("valid", "optimize", {**result, "leftover_tmp": [".ses", "x.onnx"]})[0] == (
        "leftover"
    )


def test_peer_output_is_checked(tmp_path: Path) -> None:
    """A peer execs its own tool; what it writes is checked afterwards (every peer exit 0
    was judged bad-output, 'no output check ran'): a valid model is ok, a broken one not."""
    from fuzz_judge import judge, run_job

    case = tmp_path / "case"
    case.mkdir()
    writer = (
        "import onnx, sys; from onnx import TensorProto as T, helper as h; "
        "g = h.make_graph([h.make_node('Relu', ['x'], ['y'])], 'g', "
        "[h.make_tensor_value_info('x', T.FLOAT, [2])], "
        "[h.make_tensor_value_info('y', T.FLOAT, [2])]); "
        "m = h.make_model(g, opset_imports=[h.make_opsetid('', 17)]); "
        "onnx.save(m, 'out/model.onnx') if sys.argv[1] == 'good' else "
        "open('out/model.onnx', 'wb').write(b'not a model')"
    )
    verdicts = []
    for kind in ("good", "bad"):
        job = {
            "exec": [sys.executable, "-c", writer, kind],
            "command": "optimize",
            "case_dir": str(case),
            "timeout": 30,
            "mem_mb": 3072,
            "scratch": str(tmp_path),
        }
        verdicts.append(judge("valid", "optimize", run_job(job), peer=True)[0])
    assert verdicts == ["ok", "bad-output"]


def test_cpu_limit_adds_ort_share_on_valid_cases_only(tmp_path: Path) -> None:
    """A valid graph ORT itself needs most of the 30 CPU s to open (bombs/chain-300k: 19 s a
    session) gets k x ORT's measured cost on top; a model ORT refuses gets nothing, and a run
    that passed only thanks to the share is still a hang under the fixed limit."""
    import onnx
    from fuzz_judge import SESSIONS, cpu_limit, fixed_verdict, judge
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    for name, write in (
        ("good", lambda p: onnx.save(helper.make_model(graph), p)),
        ("bad", lambda p: p.write_bytes(b"not a model")),
    ):
        (tmp_path / name).mkdir()
        write(tmp_path / name / "model.onnx")
    job = {"timeout": 30, "mem_mb": 3072, "scratch": str(tmp_path), "ort_sessions": 2}
    limit, share = cpu_limit({**job, "case_dir": str(tmp_path / "good")})
    assert share is not None and limit == 30 + 2 * share
    assert cpu_limit({**job, "case_dir": str(tmp_path / "bad")}) == (30.0, None)
    assert cpu_limit({**job, "case_dir": str(tmp_path / "good"), "ort_sessions": 0})[0] == 30
    assert SESSIONS["inspect"] == 0 and SESSIONS["optimize"] == 2
    result = {
        "exit": 0,
        "timeout": False,
        "seconds": 90.0,
        "cpu": 45.0,
        "cpu_limit": 70.0,
        "cpu_limit_fixed": 30,
        "stderr": "",
        "leaked": False,
        "changed": False,
        "leftover_tmp": [],
        "outputs": ["model.onnx"],
        "check": "ok",
    }
    verdict = judge("valid", "optimize", result)[0]
    assert (verdict, fixed_verdict(verdict, result)) == ("ok", "hang")
    assert fixed_verdict("ok", {**result, "cpu": 12.0}) == "ok"
