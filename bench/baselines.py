"""Off-the-shelf baselines that bench/lwct_reference.py runs beside lwct at the same accuracy budget, their size
counted exactly like ours: the length of the `.sqz` file that `core.artifacts.sqz.pack_sqz` writes (same header,
same per-tensor encodings, same choice of the smallest of raw/zlib/lzma for the whole body).

- global L1 unstructured pruning (torch.nn.utils.prune), levels walked gradually with the same fine-tuning as lwct's
  pruning stage, stored as lwct stores its float layers (`float_precision`: int8 codes with a per-layer scale by
  default, or float16), accuracy
  measured with those rounded weights;
- int8 weight-only quantization (torchao's symmetric per-output-channel affine primitives, the scheme of its
  Int8WeightOnlyConfig, applied to convolutions as well), stored as int8 codes + one float32 scale per channel.
"""

import copy
from dataclasses import dataclass
from types import SimpleNamespace

import torch
from torch import nn
from torch.nn.utils import prune
from torchao.quantization.quant_primitives import MappingType, choose_qparams_affine, dequantize_affine, quantize_affine

from squeezer.core.artifacts.sqz import pack_sqz, round_for_storage
from squeezer.core.config import LwctConfig
from squeezer.core.intake.data import Dataset
from squeezer.core.intake.models import LoadedModel
from squeezer.core.measure import top1_accuracy
from squeezer.core.methods.lwct import prunable_layers
from squeezer.core.train import fit, fit_options, stage_epochs


@dataclass
class BaselineResult:
    module: nn.Module  # weights exactly as they are evaluated
    packed_bytes: int
    accuracy: float
    sparsity: float | None
    trials: list[dict]


class _StateOnly:
    """Hands pack_sqz a state dict that is not a runnable module (int8 codes + scales)."""

    def __init__(self, state: dict[str, torch.Tensor]):
        self._state = state

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self._state


def sparse_float_bytes(model: LoadedModel, module: nn.Module) -> int:
    """Packed size with every prunable weight offered the sparse-float encoding (kept dense when that is smaller)."""
    layers = [SimpleNamespace(name=name, representation="sparse-float", sigma=None) for name in prunable_layers(module)]
    return len(pack_sqz(model.with_module(module), layers))


def pruned_copy(original: nn.Module, pruned: nn.Module, precision: str) -> nn.Module:
    """A plain copy of `original` holding `pruned`'s masked weights (torch.nn.utils.prune's weight_orig ⊙ weight_mask)
    rounded to `precision`."""
    state = {
        key: value for key, value in pruned.state_dict().items() if not key.endswith(("weight_orig", "weight_mask"))
    }
    with torch.no_grad():
        for name, layer in prunable_layers(pruned).items():
            state[f"{name}.weight"] = round_for_storage(layer.weight_orig * layer.weight_mask, precision)
    plain = copy.deepcopy(original).float().cpu()
    plain.load_state_dict(state)
    return plain.eval()


def global_l1_pruning(
    model: LoadedModel, data: Dataset, settings: LwctConfig, baseline_accuracy: float, budget: float, seed: int = 0
) -> BaselineResult:
    """The sparsest level of `settings.sparsity_grid` whose fine-tuned accuracy stays within the budget.

    Like lwct's pruning stage: levels in increasing order, each pruned from the previous fine-tuned weights, fine-tuned
    as many epochs with the same optimiser settings, stop at the first level over budget.
    """
    epochs = stage_epochs(settings, settings.prune_epochs, len(data.y_train))
    module = copy.deepcopy(model.module).float().cpu()
    targets = [(layer, "weight") for layer in prunable_layers(module).values()]
    total = sum(layer.weight.numel() for layer, _ in targets)
    best = BaselineResult(copy.deepcopy(module).eval(), sparse_float_bytes(model, module), baseline_accuracy, 0.0, [])
    for i, sparsity in enumerate(sorted(settings.sparsity_grid)):
        # an int amount counts among the still unpruned weights: prune up to `sparsity` of all of them
        already = sum(int((layer.weight == 0).sum()) for layer, _ in targets)
        prune.global_unstructured(
            targets, pruning_method=prune.L1Unstructured, amount=max(round(sparsity * total) - already, 0)
        )
        fit(module, data.x_train, data.y_train, epochs=epochs, seed=seed + i, **fit_options(settings))
        plain = pruned_copy(model.module, module, settings.float_precision)
        accuracy = top1_accuracy(plain, data.x_val, data.y_val)
        packed = sparse_float_bytes(model, plain)
        within = baseline_accuracy - accuracy <= budget
        best.trials.append({"sparsity": sparsity, "accuracy": accuracy, "packed_bytes": packed, "accepted": within})
        if not within:
            break
        best.module, best.packed_bytes, best.accuracy, best.sparsity = plain.eval(), packed, accuracy, sparsity
    return best


def int8_weight_only(model: LoadedModel, data: Dataset) -> BaselineResult:
    """Symmetric per-output-channel int8 codes for every conv/linear weight; accuracy of the dequantized weights."""
    module = copy.deepcopy(model.module).float().cpu().eval()
    state = dict(module.state_dict())
    for name, layer in prunable_layers(module).items():
        weight = layer.weight.detach()
        block = (1, *weight.shape[1:])
        scale, zero_point = choose_qparams_affine(
            weight, MappingType.SYMMETRIC, block, torch.int8, scale_dtype=torch.float32
        )
        codes = quantize_affine(weight, block, scale, zero_point, torch.int8)
        with torch.no_grad():
            layer.weight.copy_(dequantize_affine(codes, block, scale, zero_point, torch.int8))
        state[f"{name}.weight"] = codes
        state[f"{name}.weight_scale"] = scale.float().flatten()
    packed = len(pack_sqz(model.with_module(_StateOnly(state)), []))
    accuracy = top1_accuracy(module, data.x_val, data.y_val)
    return BaselineResult(module, packed, accuracy, None, [])
