"""Weight clustering (palettization): 2^bits shared values per weight, as packed indices + palette.

Modules, one job each:
  kmeans    1-D k-means: exact optimum by dynamic programming, k-means++ / density /
            linear starts for Lloyd, zero kept as its own entry for pruned tensors;
  palette   the Palettized form (indices, per-group palettes, int8 grid) and clustering a tensor;
  weights   which tensors are layer weights and their channel axis;
  refine    least-squares palette refit on calibration activations, level by level;
  storage   packed indices + palette in the graph, expanded by ORT at session start;
            pack-palette / unpack-palette passes;
  cluster   the `cluster-weights` pass; run: clustering a model and reporting on it.
"""

from onnxslim.passes.cluster.cluster import ClusterWeights
from onnxslim.passes.cluster.storage import PackPalette, UnpackPalette

__all__ = ["ClusterWeights", "PackPalette", "UnpackPalette"]
