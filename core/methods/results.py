"""What every method returns: the compressed module, one row per layer and the trials tried on the way.

The pipeline turns these into report.json (core.artifacts.report) and `.sqz` packing reads `LayerState` rows, so the
field names are part of the report's contract.
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Self

if TYPE_CHECKING:  # annotations only: the report's model (and so the CLI and the API) reads these without torch
    import torch
    from torch import nn


@dataclass
class LayerState:
    """One convolution or linear layer of the compressed model: how its weights are stored and why."""

    name: str
    type: str
    shape: list[int]
    params: int
    sparsity: float
    representation: str  # "ternary" | "sparse-float" | "float"
    sigma: float | None
    bits: float
    significance_rank: int
    accepted: bool

    @classmethod
    def of(cls, name: str, layer: "nn.Module", weight: "torch.Tensor", **fields) -> Self:
        """The row of `layer`, stored as `weight`: its type, shape, size and (unless given) sparsity read from them."""
        fields.setdefault("sparsity", float((weight == 0).float().mean()))
        return cls(name=name, type=type(layer).__name__, shape=list(weight.shape), params=weight.numel(), **fields)


@dataclass
class ChannelLayerState(LayerState):
    """A layer of a channel-pruned model: LayerState plus how many output channels stayed, and why."""

    channels_before: int
    channels_kept: int
    channels_removed: int
    reason: str

    @classmethod
    def kept_float(
        cls, name: str, layer: "nn.Module", weight: "torch.Tensor", before: int, kept: int, reason: str
    ) -> Self:
        """The row of a float layer that kept `kept` of its `before` output channels, for `reason`."""
        return cls.of(
            name, layer, weight, representation="float", sigma=None, bits=32.0, significance_rank=-1,
            accepted=kept < before, channels_before=before, channels_kept=kept, channels_removed=before - kept,
            reason=reason,
        )  # fmt: skip


@dataclass
class Trial:
    """One point on the trade-off curve: a compression step tried, its accuracy and whether it stayed in budget."""

    step: int
    stage: str
    layers: list[str]
    accuracy: float
    compression_ratio: float
    accepted: bool
    sparsity: float | None


@dataclass
class MethodResult:
    module: "nn.Module"
    layers: list[LayerState]
    trials: list[Trial]
    baseline_accuracy: float
    accuracy: float
    target_met: bool
    stopped_early: str | None  # "time_limit" when the time limit cut the run; None when it ran to its end
    # The deployable model.onnx when the method made one itself (int8: the QDQ file `accuracy` was measured on);
    # None: the pipeline exports the module. `candidates`: auto's within-budget choice, for the report.
    onnx: bytes | None = None
    candidates: list[dict] | None = None
    # The learning rate used, the range test behind it, rolled-back tries and stages none saved (MethodRun).
    fine_tuning: dict | None = None
