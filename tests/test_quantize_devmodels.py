"""The real corpus (skipped when ~/.cache/devmodels is not fetched): already-int8 models are
refused, small float ones quantize, load on ORT and stay close to the float model."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DEVMODELS_CACHE, devmodel_feeds, devmodels

from onnxslim import api, io
from onnxslim.errors import UsageError

ALREADY_INT8 = ("t5_encoder_int8", "voicefilter_lite_int8", "tashkeel_ensemble_int8")
SMALL_FLOAT = ("name_romanizer_decoder", "lac_bigru")
AVAILABLE = {m["id"] for m in devmodels()}


def _path(model_id: str):
    if model_id not in AVAILABLE:
        pytest.skip(f"{model_id} not fetched; run ../shared/devmodels/fetch.py")
    return DEVMODELS_CACHE / f"{model_id}.onnx"


@pytest.mark.devmodels
@pytest.mark.parametrize("model_id", ALREADY_INT8)
def test_already_quantized_models_are_refused(model_id):
    model = io.load(_path(model_id))
    for mode in ("static", "dynamic", "weight-only"):
        with pytest.raises(UsageError, match="already quantized"):
            api.quantize(model, mode=mode, calib=devmodel_feeds(model_id, 1), verify=False)


@pytest.mark.devmodels
@pytest.mark.parametrize("model_id", SMALL_FLOAT)
@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_small_float_models_quantize_and_stay_close(model_id, mode):
    path = _path(model_id)
    calib, check = devmodel_feeds(model_id, 16, seed=0), devmodel_feeds(model_id, 4, seed=1)
    options = {"latency_guard": False} if mode == "static" else {}
    result = api.quantize(path, mode=mode, calib=calib, data=check, runs=0, **options)
    assert result.report.quantized_nodes and result.bytes_after < result.bytes_before * 0.5
    for parity in result.validation.outputs:
        if not np.isnan(parity.cosine):
            assert parity.cosine > 0.999, (parity.name, parity.cosine)
