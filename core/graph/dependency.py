"""Channel dependency graph: which output channels of which layers feed which inputs, traced with torch.fx.

Every channel of every tensor on the channel axis (dim 1) carries a class id. Convolutions and linear layers
(producers) create fresh classes for their outputs; channel-wise operations (batch norm, activations, pooling,
flatten) pass classes through; residual additions and element-wise products unite the classes of their operands
position by position (those channels are removed together); concatenations join the operands' classes; a grouped
or depthwise convolution unites each of its groups' input and output channels (a group goes away whole).

A class is *removable* unless it reaches the model's input or output or an operation the graph cannot follow;
those are frozen, and the layers whose channels they hold are reported and left alone.

Removing a set of classes is exact: the shrunk model computes what the *masked* model computes, where the masked
model zeroes the removed classes' channels at every input of a consumer (convolution or linear layer). Nothing
else reads those channels, since a class is closed under the channel-wise operations it passes through.
"""

import math
import operator
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from squeezer.core.errors import UnsupportedLayerError

CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
PRODUCERS = (*CONVOLUTIONS, *TRANSPOSED, nn.Linear)
# A PRODUCERS instance, for the type checker: a layer whose `weight` (and optional `bias`) are tensors.
Convolution = nn.modules.conv._ConvNd
Producer = Convolution | nn.Linear


def producer(module: nn.Module, name: str) -> Producer:
    """The convolution or linear layer `name` of `module`."""
    return cast(Producer, module.get_submodule(name))


def affine_parameters(layer: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The weight and bias of a convolution, linear or batch-norm layer."""
    return cast(torch.Tensor, layer.weight), cast(torch.Tensor | None, layer.bias)


# Modules and functions that act on each channel on its own and keep the channel count.
_CHANNELWISE_MODULES = (
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.Sigmoid,
    nn.Tanh,
    nn.Mish,
    nn.Softplus,
    nn.Identity,
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.MaxPool3d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AvgPool3d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveAvgPool3d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.AdaptiveMaxPool3d,
    nn.Upsample,
    nn.UpsamplingNearest2d,
    nn.UpsamplingBilinear2d,
    nn.ZeroPad2d,
)
# onnx2torch's modules (matched by class name: the converter is imported only for ONNX models) and torchvision's
# StochasticDepth (identity in eval, whole samples dropped in training) act on each channel alone; the binary
# operations pair channels at the same position.
_ONNX_CHANNELWISE = {
    "OnnxGlobalAveragePool",
    "OnnxGlobalAveragePoolWithKnownInputShape",
    "OnnxHardSigmoid",
    "OnnxCopyIdentity",
    "OnnxErf",
    "OnnxGelu",
    "OnnxClip",
    "StochasticDepth",
}
_ONNX_ELEMENTWISE = {torch.add, torch.sub, torch.mul, torch.div}
_CHANNELWISE_FUNCTION_NAMES = {"stochastic_depth"}  # torchvision.ops, not imported here
_F = torch.nn.functional
_CHANNELWISE_FUNCTIONS = {
    torch.relu,
    _F.relu,
    _F.relu6,
    _F.leaky_relu,
    _F.elu,
    _F.gelu,
    _F.silu,
    _F.hardswish,
    _F.hardsigmoid,
    _F.hardtanh,
    torch.sigmoid,
    _F.sigmoid,
    torch.tanh,
    _F.tanh,
    _F.mish,
    _F.softplus,
    _F.dropout,
    _F.dropout2d,
    _F.max_pool1d,
    _F.max_pool2d,
    _F.max_pool3d,
    _F.avg_pool1d,
    _F.avg_pool2d,
    _F.avg_pool3d,
    _F.adaptive_avg_pool1d,
    _F.adaptive_avg_pool2d,
    _F.adaptive_avg_pool3d,
    _F.adaptive_max_pool2d,
    _F.interpolate,
    torch.clone,
    operator.neg,
    torch.neg,
    torch.abs,
}
_CHANNELWISE_METHODS = {
    "relu",
    "relu_",
    "sigmoid",
    "tanh",
    "clone",
    "contiguous",
    "float",
    "to",
    "type_as",
    "detach",
    "neg",
    "abs",
    "clamp",
    "clamp_",
}
_ELEMENTWISE = {
    operator.add,
    operator.iadd,
    operator.sub,
    operator.mul,
    operator.imul,
    operator.truediv,
    torch.add,
    torch.sub,
    torch.mul,
    torch.div,
}
_ELEMENTWISE_METHODS = {"add", "add_", "sub", "mul", "mul_", "div"}
_RESHAPES = {torch.flatten, torch.reshape}
_RESHAPE_METHODS = {"flatten", "view", "reshape", "squeeze"}
_REDUCTIONS = {torch.mean, torch.sum, torch.amax}
_REDUCTION_METHODS = {"mean", "sum", "amax"}


class _UnionFind:
    def __init__(self):
        self.parent: list[int] = []
        self.frozen: dict[int, str] = {}  # root -> why its channels must stay

    def fresh(self, count: int, frozen: str | None = None) -> torch.Tensor:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        if frozen:
            self.frozen.update({i: frozen for i in range(start, start + count)})
        return torch.arange(start, start + count)

    def find(self, i: int) -> int:
        root = i
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[i] != root:
            self.parent[i], i = root, self.parent[i]
        return root

    def union(self, a: int, b: int) -> None:
        a, b = self.find(a), self.find(b)
        if a == b:
            return
        self.parent[b] = a
        if b in self.frozen:
            self.frozen.setdefault(a, self.frozen.pop(b))

    def freeze(self, ids: torch.Tensor, why: str) -> None:
        for i in ids.tolist():
            self.frozen.setdefault(self.find(i), why)


@dataclass
class ChannelGraph:
    """The traced dependencies of one module. Class ids are union-find roots (see `root`).

    producers: layer name -> class of each output channel (conv, transposed conv, linear)
    consumers: layer name -> class of each input channel/feature (the same layers, reading their input)
    norms: batch-norm name -> class of each channel
    grouped: convolutions with groups > 1 (their groups go away whole)
    norm_after: producer -> the affine batch norm that alone reads its output (where a channel's scale is set)
    frozen: root -> why its channels cannot be removed
    unsupported: operations the graph could not follow, as "node: what" strings
    """

    producers: dict[str, torch.Tensor] = field(default_factory=dict)
    consumers: dict[str, torch.Tensor] = field(default_factory=dict)
    norms: dict[str, torch.Tensor] = field(default_factory=dict)
    grouped: set[str] = field(default_factory=set)
    norm_after: dict[str, str] = field(default_factory=dict)
    frozen: dict[int, str] = field(default_factory=dict)
    unsupported: list[str] = field(default_factory=list)
    _roots: list[int] = field(default_factory=list)

    def root(self, ids: torch.Tensor) -> torch.Tensor:
        return torch.tensor([self._roots[i] for i in ids.tolist()], dtype=torch.long)

    def removable(self) -> list[int]:
        """Roots that may be removed, in order of first appearance among the producers."""
        seen: dict[int, None] = {}
        for ids in self.producers.values():
            for root in self.root(ids).tolist():
                if root not in self.frozen:
                    seen.setdefault(root, None)
        return list(seen)

    def members(self) -> dict[int, list[tuple[str, int]]]:
        """Removable root -> the (producer, output channel) pairs it holds."""
        members: dict[int, list[tuple[str, int]]] = {}
        for name, ids in self.producers.items():
            for channel, root in enumerate(self.root(ids).tolist()):
                if root not in self.frozen:
                    members.setdefault(root, []).append((name, channel))
        return members

    def channel_groups(self) -> dict[str, list[int]]:
        """Removable roots grouped by the set of producers that hold them (one conv, or a residual stage): the
        "layer" within which importance scores are normalised. Keyed by the first producer's name."""
        groups: dict[tuple[str, ...], list[int]] = {}
        for root, pairs in self.members().items():
            groups.setdefault(tuple(sorted({name for name, _ in pairs})), []).append(root)
        return {key[0]: roots for key, roots in groups.items()}

    def why_frozen(self, name: str) -> str | None:
        """Why layer `name`'s output channels are left alone (None when some can be removed)."""
        roots = self.root(self.producers[name]).tolist()
        reasons = [self.frozen[r] for r in roots if r in self.frozen]
        return reasons[0] if len(reasons) == len(roots) else None


def trace(module: nn.Module, input_shape: tuple[int, ...]) -> ChannelGraph:
    """Traces `module` on one (1, *input_shape) input. Raises UnsupportedLayerError when fx cannot trace it at
    all (data-dependent control flow); operations it can trace but not follow are listed in `unsupported`."""
    try:
        graph_module = module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)
    except Exception as error:  # fx raises many types (TraceError, TypeError, NotImplementedError) for dynamic code
        raise UnsupportedLayerError(f"the model cannot be traced for channel removal: {str(error)[:200]}") from None
    was_training = module.training
    try:
        with torch.no_grad():
            ShapeProp(graph_module.eval()).propagate(torch.zeros(1, *input_shape))
    finally:
        module.train(was_training)
    return _Tracer(graph_module).run()


def _args(node: fx.Node) -> tuple[Any, ...]:
    """A node's positional arguments: nodes, or constants (ints, tuples) whose types fx leaves open."""
    return node.args


def _kwargs(node: fx.Node) -> dict[str, Any]:
    return dict(node.kwargs)


def _shape(value) -> torch.Size | None:
    meta = value.meta.get("tensor_meta") if isinstance(value, fx.Node) else None
    return getattr(meta, "shape", None)


def _known_shape(node: fx.Node) -> torch.Size:
    """The shape of a node that computes a tensor (ShapeProp recorded it)."""
    shape = _shape(node)
    assert shape is not None, f"{node.name} has no recorded shape"
    return shape


class _Tracer:
    def __init__(self, graph_module: fx.GraphModule):
        self.gm = graph_module
        self.modules = dict(graph_module.named_modules())
        self.sets = _UnionFind()
        self.result = ChannelGraph()
        self.classes: dict[fx.Node, torch.Tensor | None] = {}

    def run(self) -> ChannelGraph:
        for node in self.gm.graph.nodes:
            self.classes[node] = self.visit(node)
        result = self.result
        result._roots = [self.sets.find(i) for i in range(len(self.sets.parent))]
        result.frozen = dict(self.sets.frozen)
        return result

    # -- helpers --------------------------------------------------------------------------------------------
    def of(self, arg) -> torch.Tensor | None:
        return self.classes.get(arg) if isinstance(arg, fx.Node) else None

    def fresh_output(self, node: fx.Node, frozen: str | None = None) -> torch.Tensor | None:
        shape = _shape(node)
        if shape is None or len(shape) < 2:
            return None
        return self.sets.fresh(shape[1], frozen)

    def unsupported(self, node: fx.Node, what: str) -> torch.Tensor | None:
        """Freezes everything flowing into `node` and gives it frozen output classes."""
        why = f"feeds {what} ({node.name}), which channel removal cannot follow"
        self.result.unsupported.append(f"{node.name}: {what}")
        for arg in node.all_input_nodes:
            if (classes := self.of(arg)) is not None:
                self.sets.freeze(classes, why)
        return self.fresh_output(node, why)

    def passthrough(self, node: fx.Node, source) -> torch.Tensor | None:
        classes, shape = self.of(source), _shape(node)
        if classes is None:
            return self.fresh_output(node, "constant")
        if shape is None or len(shape) < 2 or shape[1] != len(classes):
            return self.unsupported(node, self.describe(node))
        return classes

    def describe(self, node: fx.Node) -> str:
        if node.op == "call_module":
            return type(self.modules[node.target]).__name__
        return getattr(node.target, "__name__", str(node.target))

    # -- node kinds -----------------------------------------------------------------------------------------
    def visit(self, node: fx.Node) -> torch.Tensor | None:
        if node.op == "placeholder":
            return self.fresh_output(node, "is the model's input")
        if node.op == "get_attr":
            return self.fresh_output(node, "is a constant tensor")
        if node.op == "output":
            for arg in node.all_input_nodes:
                if (classes := self.of(arg)) is not None:
                    self.sets.freeze(classes, "feeds the model's output")
            return None
        if node.op == "call_module":
            return self.visit_module(node, self.modules[cast(str, node.target)])
        return self.visit_function(node)

    def visit_module(self, node: fx.Node, module: nn.Module) -> torch.Tensor | None:
        source = _args(node)[0] if _args(node) else None
        inputs = self.of(source)
        name = cast(str, node.target)  # a call_module node's target is the module's name
        if isinstance(module, (*PRODUCERS,)) and inputs is not None:
            return self.visit_producer(node, cast(Producer, module), inputs)
        if isinstance(module, NORMS) and inputs is not None and len(inputs) == module.num_features:
            self.result.norms[name] = inputs
            if isinstance(source, fx.Node) and source.op == "call_module" and len(source.users) == 1 and module.affine:
                producer = cast(str, source.target)
                if producer in self.result.producers:
                    self.result.norm_after[producer] = name
            return inputs
        if isinstance(module, _CHANNELWISE_MODULES):
            return self.passthrough(node, source)
        if isinstance(module, nn.Flatten):
            return self.reshape(node, source)
        return self.visit_onnx_module(node, module, source)

    def visit_onnx_module(self, node: fx.Node, module: nn.Module, source) -> torch.Tensor | None:
        """onnx2torch's own modules in converted ONNX graphs: Add/Sub/Mul/Div (residual additions, squeeze-and-excite
        gates, hard-swish written out), per-channel activations and global pooling, Reshape, Concat, ReduceMean."""
        kind = type(module).__name__
        if kind == "OnnxBinaryMathOperation" and getattr(module, "math_op_function", None) in _ONNX_ELEMENTWISE:
            return self.elementwise(node, [a for a in _args(node) if isinstance(a, fx.Node)])
        if kind in _ONNX_CHANNELWISE:
            return self.passthrough(node, source)
        if kind == "OnnxReshape":
            return self.reshape(node, source)
        if kind == "OnnxConcat":
            return self.join(node, list(_args(node)), getattr(module, "axis", 0))
        if kind == "OnnxReduceStaticAxes" and getattr(module, "operation_type", "") in ("ReduceMean", "ReduceMax"):
            axes, rank = getattr(module, "axes", None), len(_shape(source) or ())
            if axes and rank >= 3 and all(a % rank >= 2 for a in axes):  # the channel axis stays axis 1
                return self.passthrough(node, source)
        return self.unsupported(node, kind)

    def visit_producer(self, node: fx.Node, module: Producer, inputs: torch.Tensor) -> torch.Tensor | None:
        name, in_shape = cast(str, node.target), _shape(_args(node)[0])
        if name in self.result.producers:  # a layer called twice shares its weights between two places
            return self.unsupported(node, f"{type(module).__name__} used more than once")
        if isinstance(module, nn.Linear):
            if in_shape is None or len(in_shape) != 2 or len(inputs) != module.in_features:
                return self.unsupported(node, "Linear on an input that is not (batch, features)")
            outputs = self.sets.fresh(module.out_features)
        else:
            if len(inputs) != module.in_channels:
                return self.unsupported(node, type(module).__name__)
            outputs = self.sets.fresh(module.out_channels)
            if module.groups > 1:
                if isinstance(module, TRANSPOSED):
                    return self.unsupported(node, "grouped transposed convolution")
                per_in, per_out = module.in_channels // module.groups, module.out_channels // module.groups
                for g in range(module.groups):
                    members = torch.cat(
                        [inputs[g * per_in : (g + 1) * per_in], outputs[g * per_out : (g + 1) * per_out]]
                    )
                    for other in members[1:].tolist():
                        self.sets.union(int(members[0]), other)
                self.result.grouped.add(name)
        self.result.consumers[name] = inputs
        self.result.producers[name] = outputs
        return outputs

    # radon D: one case per kind of tensor function fx can record; split, the cases would read apart from the switch.
    def visit_function(self, node: fx.Node) -> torch.Tensor | None:
        target, method = node.target, node.op == "call_method"
        tensor_args = [a for a in _args(node) if isinstance(a, fx.Node)]
        if _shape(node) is None:  # sizes, shapes and other non-tensor values carry no channels
            return None
        if (method and target in _CHANNELWISE_METHODS) or (not method and target in _CHANNELWISE_FUNCTIONS):
            return self.passthrough(node, _args(node)[0])
        if (method and target in _ELEMENTWISE_METHODS) or (not method and target in _ELEMENTWISE):
            return self.elementwise(node, tensor_args)
        if (method and target in _RESHAPE_METHODS) or (not method and target in _RESHAPES):
            return self.reshape(node, _args(node)[0])
        if (method and target in _REDUCTION_METHODS) or (not method and target in _REDUCTIONS):
            return self.reduction(node)
        if not method and target in (torch.cat, torch.concat):
            return self.concatenate(node)
        if not method and getattr(target, "__name__", "") in _CHANNELWISE_FUNCTION_NAMES:
            return self.passthrough(node, _args(node)[0])
        return self.unsupported(node, self.describe(node))

    def elementwise(self, node: fx.Node, operands: list[fx.Node]) -> torch.Tensor | None:
        """Residual additions and gating products: channels at the same position go together."""
        out_shape = _known_shape(node)
        merged = None
        for operand in operands:
            shape, classes = _shape(operand), self.of(operand)
            if shape is None or shape.numel() == 1:
                continue  # a scalar tensor scales every channel alike
            if classes is None or len(shape) != len(out_shape) or len(classes) not in (1, out_shape[1]):
                return self.unsupported(node, f"{self.describe(node)} with broadcasting across the channel axis")
            if len(classes) == 1 and out_shape[1] != 1:
                self.sets.freeze(classes, f"is broadcast over channels at {node.name}")
                continue
            if merged is None:
                merged = classes
            else:
                for a, b in zip(merged.tolist(), classes.tolist(), strict=True):
                    self.sets.union(a, b)
        return merged if merged is not None else self.fresh_output(node, "constant")

    def reshape(self, node: fx.Node, source) -> torch.Tensor | None:
        """Flattening (batch, C, *spatial) to (batch, C·spatial) repeats each channel's class over its positions."""
        classes, in_shape, out_shape = self.of(source), _shape(source), _known_shape(node)
        if classes is None or in_shape is None or len(out_shape) < 2 or out_shape[0] != in_shape[0]:
            return self.unsupported(node, self.describe(node))
        spatial = math.prod(in_shape[2:])
        if len(out_shape) == 2 and out_shape[1] == in_shape[1] * spatial:
            return classes.repeat_interleave(spatial)
        if out_shape[1] == in_shape[1] and math.prod(out_shape[2:]) == spatial:
            return classes  # only the spatial axes changed (squeeze, unflatten)
        return self.unsupported(node, self.describe(node))

    def reduction(self, node: fx.Node) -> torch.Tensor | None:
        """Pooling written as x.mean((2, 3)): keeps the channel axis when it reduces only later axes."""
        dims = _kwargs(node).get("dim", _args(node)[1] if len(_args(node)) > 1 else None)
        source = _args(node)[0]
        rank = len(_shape(source) or ())
        dims = (dims,) if isinstance(dims, int) else dims
        if dims is None or rank < 2 or any(d % rank < 2 for d in dims):
            return self.unsupported(node, self.describe(node))
        return self.passthrough(node, source)

    def concatenate(self, node: fx.Node) -> torch.Tensor | None:
        """U-Net skips: the channels of every operand, side by side."""
        operands = _args(node)[0] if _args(node) else _kwargs(node)["tensors"]
        dim = _kwargs(node).get("dim", _args(node)[1] if len(_args(node)) > 1 else 0)
        return self.join(node, list(operands), dim)

    def join(self, node: fx.Node, operands: list, dim: int) -> torch.Tensor | None:
        """Operands concatenated along `dim`: along channels they sit side by side; along another axis each holds the
        same channels."""
        out_rank = len(_known_shape(node))
        classes = [self.of(o) for o in operands]
        parts = [p for p in classes if p is not None]
        if len(parts) < len(classes):
            return self.unsupported(node, "concatenation of a constant")
        if dim % out_rank == 1:
            return torch.cat(parts)
        for part in parts[1:]:  # along another axis each operand holds the same channels
            if len(part) != len(parts[0]):
                return self.unsupported(node, "concatenation")
            for a, b in zip(parts[0].tolist(), part.tolist(), strict=True):
                self.sets.union(a, b)
        return parts[0]
