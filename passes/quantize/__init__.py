"""Int8 quantization: range statistics, calibration, QDQ insertion and the quantize passes.

Modules, one job each:
  ranges      streaming per-tensor statistics (min/max, growing histograms) and the
              calibration methods minmax / percentile / entropy / mse;
  collect     fetch intermediate tensors from ONNX Runtime in memory, subgraphs included;
  policy      which nodes and tensors to quantize, and the int8 types for the target CPU;
  qdq         QuantizeLinear/DequantizeLinear insertion with int8 weights and int32 biases;
  static      the `quantize-static` pass; dynamic / weight_only: the other modes.
"""
