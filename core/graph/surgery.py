"""Physical channel removal on a traced ChannelGraph, the masked model it must equal, and the architecture record
("channels" override) that lets a shrunk model be rebuilt from its registry name."""

import dataclasses
from typing import cast

import torch
from torch import nn

from squeezer.core.errors import ModelFormatError
from squeezer.core.graph.dependency import PRODUCERS, TRANSPOSED, ChannelGraph, Convolution, Producer, producer, trace
from squeezer.core.intake.names import shown_list

CHANNELS_ARG = "channels"  # architecture args key: {layer name: output channels (or features) kept}


def width(layer: nn.Module) -> int:
    """Output channels (or features) of a convolution or linear layer."""
    return layer.out_features if isinstance(layer, nn.Linear) else cast(Convolution, layer).out_channels


def producer_widths(module: nn.Module) -> dict[str, int]:
    return {name: width(layer) for name, layer in module.named_modules() if isinstance(layer, PRODUCERS)}


def _kept(graph: ChannelGraph, ids: torch.Tensor, removed: set[int]) -> torch.Tensor:
    return torch.tensor([r not in removed for r in graph.root(ids).tolist()], dtype=torch.bool)


def input_masks(graph: ChannelGraph, removed: set[int]) -> dict[str, torch.Tensor]:
    """Consumer name -> which of its input channels/features stay (only consumers that lose some)."""
    masks = {name: _kept(graph, ids, removed) for name, ids in graph.consumers.items()}
    return {name: mask for name, mask in masks.items() if not mask.all()}


def mask_consumers(module: nn.Module, graph: ChannelGraph, removed: set[int]) -> list:
    """Turns `module` into the masked model: removed channels are zeroed at every consumer's input. Returns the
    hook handles (call .remove() on each to undo)."""
    handles = []
    for name, keep in input_masks(graph, removed).items():

        def zero_removed(layer, inputs, keep=keep):
            x = inputs[0]
            shape = (1, -1) + (1,) * (x.dim() - 2)
            return (x * keep.to(x.device, x.dtype).view(shape), *inputs[1:])

        handles.append(module.get_submodule(name).register_forward_pre_hook(zero_removed))
    return handles


def _set(layer: nn.Module, name: str, value: torch.Tensor | None) -> None:
    if value is None:
        return
    current = getattr(layer, name)
    if isinstance(current, nn.Parameter):
        setattr(layer, name, nn.Parameter(value.detach().clone(), requires_grad=current.requires_grad))
    else:
        setattr(layer, name, value.detach().clone())


def _slice(tensor: torch.Tensor | None, dim: int, keep: torch.Tensor) -> torch.Tensor | None:
    return None if tensor is None else tensor.index_select(dim, keep.nonzero().flatten().to(tensor.device))


def shrink(module: nn.Module, graph: ChannelGraph, removed: set[int]) -> nn.Module:
    """Removes the channels of the `removed` classes from `module` in place (and returns it)."""
    frozen = removed & set(graph.frozen)
    if frozen:
        raise ValueError(f"classes {sorted(frozen)[:5]} are frozen and cannot be removed")
    for name, ids in graph.producers.items():
        layer = producer(module, name)
        keep_out, keep_in = _kept(graph, ids, removed), _kept(graph, graph.consumers[name], removed)
        if keep_out.all() and keep_in.all():
            continue
        if not keep_out.any() or not keep_in.any():
            raise ValueError(f"removing every channel of {name} would disconnect the model")
        if isinstance(layer, nn.Linear):
            _set(layer, "weight", _slice(_slice(layer.weight, 0, keep_out), 1, keep_in))
            _set(layer, "bias", _slice(layer.bias, 0, keep_out))
            layer.in_features, layer.out_features = int(keep_in.sum()), int(keep_out.sum())
            continue
        if isinstance(layer, TRANSPOSED):
            _set(layer, "weight", _slice(_slice(layer.weight, 0, keep_in), 1, keep_out))
        elif name in graph.grouped:  # whole groups go: the per-group fan-in stays, the group count falls
            _set(layer, "weight", _slice(layer.weight, 0, keep_out))
            layer.groups = layer.groups * int(keep_out.sum()) // len(keep_out)
        else:
            _set(layer, "weight", _slice(_slice(layer.weight, 0, keep_out), 1, keep_in))
        _set(layer, "bias", _slice(layer.bias, 0, keep_out))
        layer.in_channels, layer.out_channels = int(keep_in.sum()), int(keep_out.sum())
    for name, ids in graph.norms.items():
        keep = _kept(graph, ids, removed)
        if keep.all():
            continue
        norm = cast(nn.modules.batchnorm._NormBase, module.get_submodule(name))
        for attribute in ("weight", "bias", "running_mean", "running_var"):
            _set(norm, attribute, _slice(getattr(norm, attribute), 0, keep))
        norm.num_features = int(keep.sum())
    return module


# -- constant outputs of removed neurons (docs/METHODS.md §3) ------------------------------------------------------

_CONSTANT_TOLERANCE = 1e-6


def _sees_borders(layer: Producer) -> bool:
    """Whether a constant input channel contributes unevenly across the output (zero padding, transposed kernels)."""
    if isinstance(layer, nn.Linear):
        return False
    if isinstance(layer, TRANSPOSED):
        return True
    return layer.padding != "valid" and (layer.padding == "same" or any(layer.padding))


@torch.no_grad()
def fold_constants(module: nn.Module, graph: ChannelGraph, removed: set[int], x: torch.Tensor) -> set[int]:
    """A removed neuron whose incoming weights are all zero still outputs a constant (ReLU(b), a batch-norm shift);
    adds that constant's contribution to every consumer's bias, so removal stays exact. Returns the classes whose
    constant cannot be folded exactly (it varies, or a padded convolution sees it only away from the borders):
    those must stay. Folds nothing for them."""
    captured: dict[str, torch.Tensor] = {}
    hooks = [
        module.get_submodule(name).register_forward_pre_hook(
            lambda layer, inputs, name=name: captured.__setitem__(name, inputs[0].detach())
        )
        for name in input_masks(graph, removed)
        if name not in graph.grouped
    ]  # a grouped consumer loses those outputs too
    try:
        module.eval()(x)
    finally:
        for hook in hooks:
            hook.remove()
    plans, unfoldable = {}, set()
    for name, inputs in captured.items():
        layer = producer(module, name)
        roots = graph.root(graph.consumers[name]).tolist()
        positions = [p for p, r in enumerate(roots) if r in removed]
        values = inputs.transpose(0, 1).flatten(1)[positions]  # (removed position, every sample and pixel)
        constant = values.mean(1)
        varies = (values.amax(1) - values.amin(1)) > _CONSTANT_TOLERANCE * constant.abs().clamp_min(1.0)
        blocked = varies | ((constant != 0) & _sees_borders(layer))
        unfoldable |= {roots[p] for p, bad in zip(positions, blocked.tolist(), strict=True) if bad}
        plans[name] = (positions, constant)
    for name, (positions, constant) in plans.items():
        layer = producer(module, name)
        roots = graph.root(graph.consumers[name]).tolist()
        chosen = [i for i, p in enumerate(positions) if roots[p] not in unfoldable]
        if not chosen:
            continue
        weight = layer.weight[:, [positions[i] for i in chosen]]
        contribution = (weight.flatten(2).sum(2) if weight.dim() > 2 else weight) @ constant[chosen]
        if layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(width(layer), dtype=layer.weight.dtype, device=layer.weight.device))
        layer.bias.add_(contribution.to(layer.bias.dtype))
    return unfoldable


# -- the architecture record --------------------------------------------------------------------------------


def apply_channel_overrides(module: nn.Module, channels: dict, input_shape: tuple[int, ...] | None) -> nn.Module:
    """Shrinks a freshly built `module` so each named layer keeps its first `channels[name]` outputs: the shapes
    a compressed model was saved with (its weights are loaded afterwards). The names come from a file: each must be
    one of the module's own convolution or linear layers (a lookup in `named_modules()`) before any is reached."""
    if not isinstance(channels, dict) or not all(
        isinstance(k, str) and isinstance(v, int) for k, v in channels.items()
    ):
        raise ModelFormatError(f"'{CHANNELS_ARG}' must map layer names to channel counts")
    if input_shape is None:
        raise ModelFormatError(f"'{CHANNELS_ARG}' needs the model's input shape")
    layers = producer_widths(module)
    unknown = [name for name in channels if name not in layers]
    if unknown:
        raise ModelFormatError(
            f"'{CHANNELS_ARG}' names {shown_list(unknown)}, which are no convolution or linear layer"
        )
    graph = trace(module, input_shape)
    removed: set[int] = set()
    for name, count in channels.items():
        if name not in graph.producers:
            raise ModelFormatError(f"'{CHANNELS_ARG}' names {name}, which the traced graph does not reach")
        if not 1 <= count <= len(graph.producers[name]):
            raise ModelFormatError(f"'{CHANNELS_ARG}': {name} cannot keep {count} channels")
        removed |= set(graph.root(graph.producers[name][count:]).tolist())
    if removed & set(graph.frozen):
        raise ModelFormatError(f"'{CHANNELS_ARG}' removes channels that must stay (model input/output)")
    shrink(module, graph, removed)
    widths = producer_widths(module)
    wrong = {name: widths[name] for name, count in channels.items() if widths[name] != count}
    if wrong:
        raise ModelFormatError(f"'{CHANNELS_ARG}' is inconsistent: coupled layers ended with {wrong}")
    return module


def with_channels(model, module: nn.Module):
    """`model` (a LoadedModel) around `module`, recording every layer whose width changed, so the packed and saved
    forms rebuild the shrunk shapes."""
    before, after = producer_widths(model.module), producer_widths(module)
    changed = {name: count for name, count in after.items() if before.get(name) != count}
    if not changed:
        return model.with_module(module)
    args = dict(model.architecture.get("args") or {})
    args[CHANNELS_ARG] = {**args.get(CHANNELS_ARG, {}), **changed}
    return dataclasses.replace(model, module=module, architecture={**model.architecture, "args": args})
