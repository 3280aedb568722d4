"""Post-training pruning: magnitude, N:M and channel pruning, layer-wise refit, sparse storage.

Modules: layers (which weights, matrix views), masks, allocation (sensitivity),
lstsq + reconstruct (least-squares refit against the original model), the passes
(magnitude, nm, channels with its dependency groups in groups), and storage
(packing sparse weights so the file shrinks without zip).
"""

from onnxslim.passes.prune.channels import ChannelPruning
from onnxslim.passes.prune.magnitude import MagnitudePruning
from onnxslim.passes.prune.nm import NMSparsity
from onnxslim.passes.prune.storage import PackSparseWeights, UnpackSparseWeights

__all__ = [
    "ChannelPruning",
    "MagnitudePruning",
    "NMSparsity",
    "PackSparseWeights",
    "UnpackSparseWeights",
]
