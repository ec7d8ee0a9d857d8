"""Depth pruning (issue 28, item 2): whole residual blocks with an identity shortcut, y = f(x) + x (or ReLU of it),
are replaced by what they compute with their branch removed (the identity, or the ReLU), where a measured
sensitivity says their removal costs little. Fewer layers run, which buys time a runtime cannot lose to channel
counts it runs slowly.

A block is found as a submodule whose traced forward adds its own input, unchanged, to a branch computed from it,
and whose output has its input's shape. Models where none is found (onnx2torch graphs are flat, DenseNet and
ShuffleNet concatenate) are refused with the reason; after removal the model must still trace, run and keep its
output shape, else the removal is refused.

The removed blocks are recorded in the architecture's args (`BLOCKS_ARG`), so a saved model rebuilds without
them; the names are looked up among the module's own submodules before any is touched.
"""

import dataclasses
import operator
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import fx, nn

from squeezer.core.errors import InputError, ModelFormatError
from squeezer.core.graph import trace
from squeezer.core.intake.names import shown_list

BLOCKS_ARG = "blocks_removed"  # architecture args key: {block name: "identity" | "relu"}
_ADDS = {operator.add, operator.iadd, torch.add}
_RELUS = {torch.relu, nn.functional.relu}
_REPLACEMENTS: dict[str, Callable[[], nn.Module]] = {"identity": nn.Identity, "relu": nn.ReLU}


@dataclass(frozen=True)
class Block:
    """A residual block by name, and what it computes without its branch."""

    name: str
    without_branch: str  # a key of _REPLACEMENTS


def residual_blocks(module: nn.Module, input_shape: tuple[int, ...]) -> list[Block]:
    """The identity-shortcut blocks of `module`, outermost first in module order (none inside another)."""
    candidates: dict[str, str] = {}
    for name, child in module.named_modules():
        if name and not any(name.startswith(f"{outer}.") for outer in candidates):
            kind = _identity_residual(child)
            if kind is not None:
                candidates[name] = kind
    shapes = _shapes(module, input_shape, list(candidates))
    return [Block(name, kind) for name, kind in candidates.items() if shapes.get(name, (0, 1))[0] == shapes[name][1]]


def _identity_residual(block: nn.Module) -> str | None:
    """ "relu" or "identity" when `block`'s forward returns [relu](branch(x) + x), else None."""
    try:
        graph = fx.symbolic_trace(block).graph
    except Exception:  # fx raises many types for code it cannot trace: such a module is no block we remove
        return None
    nodes = list(graph.nodes)
    inputs = [n for n in nodes if n.op == "placeholder"]
    output = nodes[-1].args[0] if nodes and nodes[-1].op == "output" else None
    if len(inputs) != 1 or not isinstance(output, fx.Node):
        return None
    kind = "identity"
    if _is_relu(output, dict(block.named_modules())):
        kind, output = "relu", output.args[0]
    if not isinstance(output, fx.Node) or not _is_add(output) or len(output.args) != 2:
        return None
    operands = [a for a in output.args if isinstance(a, fx.Node)]
    if len(operands) != 2 or sum(a is inputs[0] for a in operands) != 1:
        return None
    return kind


def _is_add(node: fx.Node) -> bool:
    return (node.op == "call_function" and node.target in _ADDS) or (
        node.op == "call_method" and node.target in ("add", "add_")
    )


def _is_relu(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        return type(modules.get(str(node.target))) is nn.ReLU
    return (node.op == "call_function" and node.target in _RELUS) or (
        node.op == "call_method" and node.target in ("relu", "relu_")
    )


def _shapes(module: nn.Module, input_shape: tuple[int, ...], names: list[str]) -> dict[str, tuple]:
    """Input and output shape of each named submodule, from one forward pass."""
    shapes: dict[str, tuple] = {}

    def record(name):
        def hook(layer, inputs, output):
            if inputs and torch.is_tensor(inputs[0]) and torch.is_tensor(output):
                shapes[name] = (tuple(inputs[0].shape), tuple(output.shape))

        return hook

    handles = [module.get_submodule(name).register_forward_hook(record(name)) for name in names]
    was_training = module.training
    device = next(module.parameters(), torch.zeros(0)).device  # the meta device when sizes are checked
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, *input_shape, device=device))
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return shapes


def remove_blocks(module: nn.Module, blocks: list[Block]) -> nn.Module:
    """Replaces each block in place by what it computes without its branch (and returns `module`)."""
    for block in blocks:
        parent_name, _, child = block.name.rpartition(".")
        setattr(module.get_submodule(parent_name), child, _REPLACEMENTS[block.without_branch]())
    return module


def check_valid(module: nn.Module, input_shape: tuple[int, ...], output_shape: tuple[int, ...]) -> None:
    """Refuses (InputError `depth_pruning_unsupported`) a module that no longer runs with its output shape or no
    longer traces for channel removal."""
    try:
        with torch.no_grad():
            shape = tuple(module.eval()(torch.zeros(2, *input_shape)).shape)
        trace(module, input_shape)
    except Exception as error:  # what a broken graph raises varies; the refusal carries its message
        raise InputError(
            f"removing residual blocks broke the model: {str(error)[:200]}", code="depth_pruning_unsupported"
        ) from None
    if shape != output_shape:
        raise InputError(
            f"removing residual blocks changed the output shape from {output_shape} to {shape}",
            code="depth_pruning_unsupported",
        )


def block_sensitivity(module: nn.Module, blocks: list[Block], score: Callable[[nn.Module], float]) -> dict[str, float]:
    """Each block's measured cost: the score of the model without that block alone, before any recovery."""
    import copy

    return {block.name: score(remove_blocks(copy.deepcopy(module), [block])) for block in blocks}


def choose_blocks(
    module: nn.Module,
    blocks: list[Block],
    score: Callable[[nn.Module], float],
    floor: float,
    saved_ms: dict[str, float] | None = None,
    enough_ms: float = float("inf"),
) -> list[Block]:
    """Blocks removed greedily, cheapest first (least score lost per millisecond saved, or least score lost), each
    kept out only while the model without every block chosen so far still scores at least `floor`; the choice
    stops once the chosen blocks save `enough_ms` (by `saved_ms`)."""
    import copy

    if not blocks:
        return []
    alone = block_sensitivity(module, blocks, score)
    base = score(module)

    def cost(block: Block) -> tuple[float, str]:
        lost = max(base - alone[block.name], 0.0)
        return (lost / max(saved_ms[block.name], 1e-9) if saved_ms else lost, block.name)

    chosen: list[Block] = []
    for block in sorted(blocks, key=cost):
        if saved_ms and sum(saved_ms[b.name] for b in chosen) >= enough_ms:
            break
        if score(remove_blocks(copy.deepcopy(module), [*chosen, block])) >= floor:
            chosen.append(block)
    return chosen


def apply_block_removals(module: nn.Module, blocks: object, input_shape: tuple[int, ...] | None) -> nn.Module:
    """Rebuilds a depth-pruned model's shape from its record: every name must be one of the module's own
    identity-shortcut blocks (looked up, never evaluated) before any is replaced."""
    if not isinstance(blocks, dict) or not all(isinstance(k, str) and v in _REPLACEMENTS for k, v in blocks.items()):
        raise ModelFormatError(f"'{BLOCKS_ARG}' must map block names to 'identity' or 'relu'")
    if input_shape is None:
        raise ModelFormatError(f"'{BLOCKS_ARG}' needs the model's input shape")
    known = {block.name: block for block in residual_blocks(module, input_shape)}
    unknown = [name for name, kind in blocks.items() if name not in known or known[name].without_branch != kind]
    if unknown:
        raise ModelFormatError(f"'{BLOCKS_ARG}' names {shown_list(unknown)}, which are no residual block of the model")
    return remove_blocks(module, [known[name] for name in blocks])


def with_architecture(model, module: nn.Module):
    """`model` (a LoadedModel) around `module`, a pruned copy of its module, recording the widths that changed and
    the residual blocks that `module` holds as their replacement, so the saved forms rebuild its shape."""
    from squeezer.core.graph import with_channels

    recorded = with_channels(model, module)
    names = dict(module.named_modules())
    if set(names) >= {name for name, _ in model.module.named_modules()} or model.input_shape is None:
        return recorded  # nothing was replaced
    removed = [
        block
        for block in residual_blocks(model.module, tuple(model.input_shape))
        if type(names.get(block.name)) is _REPLACEMENTS[block.without_branch]
    ]
    if not removed:
        return recorded
    args = dict(recorded.architecture.get("args") or {})
    args[BLOCKS_ARG] = {**args.get(BLOCKS_ARG, {}), **{block.name: block.without_branch for block in removed}}
    return dataclasses.replace(recorded, architecture={**recorded.architecture, "args": args})
