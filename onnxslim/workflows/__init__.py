"""The user's jobs, one module each: what a CLI command or an API function does.

    optimize   the lossless clean-up, each pass guarded on ONNX Runtime
    quantize   int8 (static, dynamic, weight-only), validated against the float model
    accuracy_aware  static int8 with the most sensitive layers returned to float until
               a labelled metric holds (`quantize --max-drop`, a recipe's max_drop)
    prune      magnitude / N:M / channel pruning, measured against the original
    cluster    weight clustering (palettization), measured against the original
    export     ORT format and a deployable bundle for ONNX Runtime Mobile
    run        a recipe's steps, each measured, then its gates (`onnxslim run`)
    search     a recipe's grid of variants on local processes or Ray
    measure    what prune and cluster measure alike (sizes, session start, top-1)
    heldout    feeds held back from calibration, and the accuracy-target check
    at_target  the accuracy-target check a search at the target judges candidates by

A workflow opens the user's data, runs passes through the pass manager
(onnxslim.pipeline), measures the result and returns a typed result; it never
prints. Arrows go down: api -> workflows -> pipeline/registry/recipe -> passes.
Nothing is imported here, so importing one workflow costs only what it needs.
"""
