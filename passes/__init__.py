"""The pass library, installed as `onnxslim.passes`.

Each module holds one family of passes. A pass is an onnx_ir pass configured by a
frozen, keyword-only dataclass whose fields carry their help text in metadata
(see `option`). The registry of recipe names lives in `onnxslim.registry`.
"""
