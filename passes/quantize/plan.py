"""The quantization plan: which nodes are quantized in which role, which tensors get Q/DQ.

Why its own module: the plan is the contract between deciding (`policy`,
`membership`) and doing (`qdq`, the fusion check, the latency guard); keeping its
data apart lets each side import it without importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NodePlan:
    """How one node is quantized."""

    name: str
    op_type: str
    role: str  # compute, island, shared, absorbed, embedding
    weights: dict[int, int | None] = field(default_factory=dict)  # input index -> channel axis
    bias: int | None = None
    activations: list[int] = field(default_factory=list)  # input indices quantized as activations
    constants: list[int] = field(default_factory=list)  # constant inputs quantized like activations
    output_quantized: bool = False
    # Quantize only between int8 neighbours (depthwise Conv: its int8 kernel is slower than
    # float, but ORT quantizes a float Conv sitting between DQ and Q itself, per tensor).
    sandwiched: bool = False


@dataclass
class TensorPlan:
    """One activation tensor that gets a QuantizeLinear/DequantizeLinear pair."""

    name: str
    range_of: str  # the tensor whose calibrated range is used (an absorbed Relu's output)
    shares: str | None = None  # reuse that tensor's scale and zero point (data movement)
    clip: tuple[float, float] | None = None  # bounds of an absorbed Clip


@dataclass
class QuantPlan:
    """Members by node name, tensors by name, and why each other candidate stays float."""

    nodes: dict[str, NodePlan]
    tensors: dict[str, TensorPlan]
    skipped: dict[str, str]  # candidate node name -> why it stays float

    @property
    def computes_int8(self) -> bool:
        """Some compute layer (or embedding gather) runs in int8: not the float model."""
        return any(p.role in ("compute", "embedding") for p in self.nodes.values())

    def range_tensors(self) -> list[str]:
        """Tensors whose calibrated range the plan needs."""
        return sorted({t.range_of for t in self.tensors.values() if t.shares is None})

    def root(self, name: str) -> TensorPlan:
        """The tensor whose parameters `name` uses (following shared-scale chains)."""
        plan = self.tensors[name]
        seen = {name}
        while plan.shares is not None and plan.shares in self.tensors and plan.shares not in seen:
            seen.add(plan.shares)
            plan = self.tensors[plan.shares]
        return plan
