"""Default static int8 on the task models (models/task_*): the int8 model loads on ORT and
keeps the metric its users see, decoded as they decode it, close to the float model.

Scored with scripts/task_metrics.py (the benchmark's code, tests/task_helpers.py) on the
committed evaluation images, against the float model's own decisions: box F1 after
YOLOv8 decoding + NMS, box F1 of DBNet's components, exact CTC strings, top-1. The
latency guard is off (on a shared machine its timing decides which layers stay float;
this test is about int8's accuracy) and so is the held-out target check with its fix
loop (`verify=False`: 30-60 s on task_yolov8 on a loaded 2-core machine, over this
module's budget); the benchmark (scripts/bench_task.py) runs the full default.
"""

from __future__ import annotations

import numpy as np
import pytest
from task_helpers import MODELS, TASKS, eval_inputs, run, task_metrics

from onnxslim import api

# Points of the task metric static int8 may lose against float on the committed eval set.
# The goal (issue 14) is 1 point everywhere; two models miss it today, so their bound is
# the measured loss plus a margin, to catch a regression (docs/benchmarks.md, "Task-level
# int8 benchmark"). Measured with the x86-avx2 kernel target, onnxruntime 1.32: on an AVX2
# CPU task_yolov8 2.3 points (box F1 0.977), on an AVX-512 VNNI CPU 3.5 (the float
# reference and the calibration ranges move with the CPU's float kernels, and one box of
# the 48 images is 0.3-0.6 points), task_crnn 1.2 (5 of 256 strings read differently),
# task_dbnet and task_mobilenetv3 0.0. Lower a bound when the quantizer gets there.
TOLERANCE_POINTS = {
    "task_yolov8": 4.5,
    "task_dbnet": 1.0,
    "task_crnn": 2.5,
    "task_mobilenetv3": 1.0,
}


@pytest.mark.parametrize("name", sorted(TASKS))
def test_default_quantize_keeps_the_task_metric(name):
    tm = task_metrics()
    task = TASKS[name]
    inputs = eval_inputs(name)
    reference = tm.decode(task, run(MODELS / f"{name}.onnx", inputs))
    result = api.quantize(
        MODELS / f"{name}.onnx",
        calib=MODELS / f"{name}.calib.npz",
        latency_guard=False,
        verify=False,
        target="x86-avx2",  # the bounds below were measured with it; 7-bit weights give the
        # same int8 results on every x86 CPU (full-range weights saturate on AVX2 without VNNI)
    )
    assert result.report.quantized_nodes, "nothing was quantized"
    got = tm.decode(task, run(result.model_bytes(), inputs))
    points = 100 * (1 - tm.task_score(task, got, reference))
    assert points <= TOLERANCE_POINTS[name], f"{name}: {points:.1f} points lost against float"


def test_decoding_counts_what_users_see():
    """The shared decoding on hand-made outputs: NMS, DBNet components, CTC, box F1."""
    tm = task_metrics()
    # two overlapping boxes of one class -> one survives NMS; a third class-1 box stays
    out = np.zeros((1, 4 + 2, 3), np.float32)
    out[0, :4] = np.array([[10, 12, 50], [10, 11, 50], [30, 31, 70], [30, 31, 70]], np.float32)
    out[0, 4:] = np.array([[0.9, 0.8, 0.1], [0.0, 0.0, 0.6]], np.float32)
    boxes = tm.yolo_decode(out)[0]
    assert boxes[:, 5].tolist() == [0.0, 1.0] and boxes[0, 4] == pytest.approx(0.9)
    assert tm.box_f1([boxes], [boxes[:1]]) == pytest.approx(2 / 3)
    # a probability map with two blobs (one an L shape) -> two boxes, unclipped
    prob = np.zeros((12, 20), np.float32)
    prob[2:5, 2:10] = 0.9
    prob[4:10, 8:10] = 0.9
    prob[6:9, 14:18] = 0.8
    found = tm.db_boxes(prob)
    assert len(found) == 2 and found[:, 0].min() < 2 and found[:, 2].max() > 18
    # CTC: repeats collapse, the blank (0) separates a doubled character
    frames = np.eye(len(tm.CHARSET) + 1)[[0, 1, 1, 0, 1, 3, 3, 0]][None]
    assert tm.ctc_decode(frames) == [tm.CHARSET[0] * 2 + tm.CHARSET[2]]
