"""The user's jobs, one module each: what a CLI command or an API function does.

    optimize   the lossless clean-up, each pass guarded on ONNX Runtime
    quantize   int8 (static, dynamic, weight-only), validated against the float model
    prune      magnitude / N:M / channel pruning, measured against the original
    cluster    weight clustering (palettization), measured against the original
    export     ORT format and a deployable bundle for ONNX Runtime Mobile
    run        a recipe's steps, each measured, then its gates (`onnxslim run`)
    search     a recipe's grid of variants on local processes or Ray
    measure    what prune and cluster measure alike (sizes, session start, top-1)

A workflow opens the user's data, runs passes through the pass manager
(onnxslim.pipeline), measures the result and returns a typed result; it never
prints. Arrows go down: api -> workflows -> pipeline/registry/recipe -> passes.
Nothing is imported here, so importing one workflow costs only what it needs.
"""
