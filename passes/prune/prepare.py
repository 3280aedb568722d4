"""What every pruning pass does first: unpack, lift constants, name nodes.

Apart from _common because it runs the unpack-sparse pass of storage, which itself
records its summary through _common.
"""

from __future__ import annotations

import onnx_ir as ir

from onnxslim.passes.prune._common import name_nodes
from onnxslim.passes.prune.layers import lift_constants
from onnxslim.passes.prune.storage import UnpackSparseWeights


def prepare(model: ir.Model) -> bool:
    """What every pruning pass does first; True if it changed the model (losslessly).

    Packed sparse weights are unpacked (a pruned model prunes again), Constant
    nodes become initializers (their tensors are weights too), and every
    main-graph node gets a unique name (reconstruction looks layers up by name).
    """
    changed = UnpackSparseWeights()(model).modified
    changed |= lift_constants(model)
    return name_nodes(model) or changed
