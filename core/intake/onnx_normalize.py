"""ONNX graphs as exporters write them, rewritten into the plain form onnx2torch converts and our channel graph
understands, before anything else reads them.

Each pass handles one exporter habit, and the normalised graph is checked against the original under onnxruntime
before it replaces it; a graph that a pass would change in meaning is kept as it came. The maintained tools do what
they fit: the onnx package's version converter and shape inference, onnxoptimizer's identity and dead-end passes.
The rest are small pattern rewrites of our own, each on constant weights only:

- weights in Constant nodes become initializers; initializers listed as graph inputs (IR < 4) are unlisted;
- nodes computing from constants only (Cast/Identity chains on weights, Transpose, Reshape...) are folded;
- opsets 9 to 21 are converted to TARGET_OPSET, which onnx2torch covers;
- free axes written as a dim_value of 0 or below (-1: older paddle2onnx and others) become named ones, the form
  every runtime reads as free;
- a fixed batch size becomes a free one; free spatial axes stay free (the data's size becomes the model's input
  shape when the data is checked against it);
- Shape → Gather → Unsqueeze → Concat → Reshape (a flatten that keeps the batch) becomes Flatten;
- an NHWC input with a leading Transpose to NCHW (tf2onnx, Keras) becomes an NCHW input;
- Gemm without transB, and MatMul + Add classifiers, become Gemm with transB (torch's Linear);
- BatchNorm folded to Conv → Mul → Add becomes the convolution's own weight and bias;
- hard-swish written as x·Clip(x+3, 0, 6)/6 or x·HardSigmoid(x) becomes HardSwish.
"""

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from squeezer.core.intake.names import shown

TARGET_OPSET = 17
SUPPORTED_OPSETS = range(7, 22)
_FOLDABLE = {
    "Identity",
    "Cast",
    "Transpose",
    "Reshape",
    "Unsqueeze",
    "Squeeze",
    "Concat",
    "Gather",
    "Mul",
    "Div",
    "Add",
    "Sub",
    "Sqrt",
    "Reciprocal",
    "Neg",
    "Flatten",
    "Expand",
    "Slice",
    "Shape",
    "Pow",
}
_MAX_FOLD_ELEMENTS = 1 << 26  # a folded constant larger than this is left to the runtime
_PARITY_TOLERANCE = 1e-3
NHWC_TO_NCHW = [0, 3, 1, 2]


@dataclass
class Normalised:
    """The normalised model and what was changed, for the report and events."""

    model: Any  # onnx.ModelProto (onnx is imported where it is used)
    changes: list[str] = field(default_factory=list)
    input_layout_changed: bool = False  # True: the input was NHWC and is now NCHW
    # The uploaded graph (free axes named), kept when no stand-in input could check the rewrites against it (it runs
    # only at its own size, which the data tells): `agrees_at` checks them then.
    unchecked_original: bytes | None = None

    def serialized(self) -> bytes:
        return self.model.SerializeToString()


def normalize_onnx(model) -> Normalised:
    """Every pass below, in order, on a copy; the original is returned untouched when the result disagrees with it
    or a pass fails on it."""
    import onnx

    original = model
    model = onnx.ModelProto()
    model.CopyFrom(original)
    result = Normalised(model)
    for step in (
        _name_free_dims,
        _unlist_initializer_inputs,
        _constants_to_initializers,
        _convert_opset,
        _constants_to_initializers,
        _fold_constants,
        _free_batch,
        _nhwc_input,
        _shape_flatten,
        _fold_constants,
        _reshape_flatten,
        _gemm_trans_b,
        _matmul_add_to_gemm,
        _conv_mul_add,
        _hardswish,
        _optimize,
        _infer_shapes,
    ):
        try:
            note = step(result.model)
        except MemoryError:
            raise
        except Exception:  # a pass tripped on a graph it was not written for: the upload goes on as it came
            return Normalised(original, [f"normalisation skipped: {step.__name__.strip('_')} failed on this graph"])
        if note:
            result.changes.append(note)
            if step is _nhwc_input:
                result.input_layout_changed = True
    if result.changes:
        reference = onnx.ModelProto()
        reference.CopyFrom(original)
        _name_free_dims(reference)  # onnxruntime reads a dim_value of 0 as a size of zero
        stand_in = _stand_in(reference)
        agreement = None if stand_in is None else _agreement(reference.SerializeToString(), result, stand_in)
        if agreement is False:
            return Normalised(original, ["normalisation skipped: the rewritten graph disagreed with the original"])
        if agreement is None:
            result.unchecked_original = reference.SerializeToString()
    return result


def agrees_at(result: Normalised, x: np.ndarray) -> bool:
    """Whether the rewrites left the outputs as they were on `x`, NCHW inputs at the data's size. True when they were
    checked already, and when the uploaded graph does not run on one such input either (a fixed batch above 1): the
    converted module's parity with the rewritten graph is then the only check."""
    if result.unchecked_original is None:
        return True
    sample = x[:1].transpose(0, 2, 3, 1) if result.input_layout_changed else x[:1]  # a fixed batch is 1 at most
    return _agreement(result.unchecked_original, result, np.ascontiguousarray(sample, dtype=np.float32)) is not False


def is_free(dim) -> bool:
    """Whether an exporter left this axis to the data: a dim_param (named or "?"), no size at all, or a dim_value of
    0 or below (ONNX has no negative sizes; -1 is how older exporters wrote "any")."""
    return not dim.HasField("dim_value") or dim.dim_value <= 0


def declared_sizes(value_info) -> list[int | None] | None:
    """The sizes a graph input or output declares, None for each free axis; None when not even the rank is given."""
    tensor = value_info.type.tensor_type
    if not tensor.HasField("shape"):
        return None
    return [None if is_free(dim) else dim.dim_value for dim in tensor.shape.dim]


def declare_unknown_ranks(model) -> None:
    """A graph input or output with no shape at all (onnxruntime runs it; onnx's checker refuses it) gets one of free
    axes: the input four (Squeezer feeds NCHW images), an output the rank shape inference finds for it."""
    import onnx

    initializers = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name not in initializers and _unshaped(value):
            value.type.tensor_type.shape.dim.extend([onnx.TensorShapeProto.Dimension() for _ in range(4)])
    outputs = [value for value in model.graph.output if _unshaped(value)]
    if not outputs:
        return
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # the checker then names what is wrong
        return
    found = {value.name: value for value in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for value in outputs:
        if value.name in found and not _unshaped(found[value.name]):
            value.type.tensor_type.shape.CopyFrom(found[value.name].type.tensor_type.shape)


def _unshaped(value) -> bool:
    return value.type.WhichOneof("value") == "tensor_type" and not value.type.tensor_type.HasField("shape")


def unconvertible_nodes(model, originals: dict[str, str] | None = None) -> list[str]:
    """'name (OpType, opset N)' for every node onnx2torch has no converter for: a refusal names the layer, not just
    the operator, by its uploaded name where `originals` (generated → uploaded, core/intake/onnx_names.py) has it."""
    from onnx2torch.node_converters.registry import get_converter

    versions = {o.domain: o.version for o in model.opset_import}
    names = []
    for index, node in enumerate(model.graph.node):
        domain = node.domain if node.domain not in ("", "ai.onnx") else ""
        try:
            get_converter(node.op_type, versions.get(node.domain, versions.get("", TARGET_OPSET)), domain)
        except NotImplementedError:
            opset = versions.get(node.domain, "?")
            name = (originals or {}).get(node.name, node.name) or f"node {index}"
            names.append(f"{shown(name)} ({shown(node.op_type)}, opset {opset})")
    return names


# -- passes: each returns a short note of what it changed, or "" ------------------------------------------------


def _name_free_dims(model) -> str:
    """dim_value 0 or -1 becomes a dim_param: "N" for the batch axis, "<tensor>_<axis>" for the others."""
    renamed = 0
    for value in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if not value.type.tensor_type.HasField("shape"):
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                dim.dim_param = "N" if axis == 0 else f"{value.name}_{axis}"
                renamed += 1
    return f"{renamed} free axes written as 0 or -1 named" if renamed else ""


def with_free_dims_named(data: bytes) -> bytes:
    """An ONNX file as onnxruntime should read it: onnxruntime takes -1 as free but 0 as a size of zero, so both
    become named axes (the file is returned as it is when it has neither)."""
    import onnx

    model = onnx.load_model_from_string(data)
    return model.SerializeToString() if _name_free_dims(model) else data


def _unlist_initializer_inputs(model) -> str:
    names = {t.name for t in model.graph.initializer}
    listed = [i for i in model.graph.input if i.name in names]
    if not listed:
        return ""
    kept = [i for i in model.graph.input if i.name not in names]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    model.ir_version = max(model.ir_version, 4)  # from IR 4 on, initializers need not be inputs
    return f"{len(listed)} initializers unlisted from the graph inputs (IR < 4)"


def _constants_to_initializers(model) -> str:
    from onnx import helper, numpy_helper

    moved = 0
    for node in list(model.graph.node):
        if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
            continue
        attribute = node.attribute[0] if len(node.attribute) == 1 else None
        if attribute is None:
            continue
        value = helper.get_attribute_value(attribute)
        if attribute.name == "value":
            array = numpy_helper.to_array(value)
        elif attribute.name in ("value_float", "value_floats"):
            array = np.asarray(value, dtype=np.float32)
        elif attribute.name in ("value_int", "value_ints"):
            array = np.asarray(value, dtype=np.int64)
        else:
            continue
        model.graph.initializer.append(numpy_helper.from_array(array, node.output[0]))
        model.graph.node.remove(node)
        moved += 1
    return f"{moved} Constant nodes turned into initializers" if moved else ""


def _opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), TARGET_OPSET)


def _convert_opset(model) -> str:
    from onnx import version_converter

    opset = _opset(model)
    if opset == TARGET_OPSET:
        return ""
    try:
        converted = version_converter.convert_version(model, TARGET_OPSET)
    except Exception:  # the converter lacks an adapter for some node: keep the opset, onnx2torch may still cope
        return ""
    converted.ir_version = max(converted.ir_version, 8)  # opset 17 needs IR 8
    model.CopyFrom(converted)
    return f"opset {opset} converted to {TARGET_OPSET}"


def _fold_constants(model) -> str:
    """Nodes whose inputs are all initializers are computed once (onnx's reference evaluator) and replaced by their
    outputs: a weight reached through Cast → Identity is a weight."""
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    constants = {t.name: t for t in model.graph.initializer}
    outputs = {o.name for o in model.graph.output}
    folded = 0
    for node in list(model.graph.node):
        if node.op_type not in _FOLDABLE or node.domain not in ("", "ai.onnx"):
            continue
        if not node.input or not all(name in constants for name in node.input if name) or set(node.output) & outputs:
            continue
        if sum(int(np.prod(constants[name].dims)) for name in node.input if name) > _MAX_FOLD_ELEMENTS:
            continue
        graph = helper.make_graph(
            [node],
            "fold",
            [],
            [helper.make_empty_tensor_value_info(o) for o in node.output],
            [constants[name] for name in node.input if name],
        )
        try:
            single = helper.make_model(graph, opset_imports=list(model.opset_import))
            values = ReferenceEvaluator(single).run(None, {})
        except Exception:
            continue
        for name, value in zip(node.output, values, strict=True):
            tensor = numpy_helper.from_array(np.asarray(value), name)
            model.graph.initializer.append(tensor)
            constants[name] = tensor
        model.graph.node.remove(node)
        folded += 1
    return f"{folded} nodes on constants folded (Cast/Identity chains on weights and the like)" if folded else ""


def _free_batch(model) -> str:
    """A batch axis fixed at export time (often 1) becomes free, and Reshape targets that copied it copy it instead."""
    dims = _graph_input(model).type.tensor_type.shape.dim
    if not dims or is_free(dims[0]):
        return ""
    batch = dims[0].dim_value
    dims[0].dim_param = "N"
    for output in model.graph.output:
        out_dims = output.type.tensor_type.shape.dim
        if out_dims and out_dims[0].HasField("dim_value") and out_dims[0].dim_value == batch:
            out_dims[0].dim_param = "N"
    del model.graph.value_info[:]
    constants = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in constants:
            _replace_leading(model, constants, node, batch)
    return f"fixed batch size {batch} made free"


def _replace_leading(model, constants, node, batch: int) -> None:
    from onnx import numpy_helper

    shape = numpy_helper.to_array(constants[node.input[1]])
    if shape.ndim == 1 and len(shape) >= 2 and shape[0] == batch:
        name = f"{node.input[1]}_free_batch"
        model.graph.initializer.append(numpy_helper.from_array(np.concatenate([[0], shape[1:]]).astype(np.int64), name))
        node.input[1] = name


def _nhwc_input(model) -> str:
    graph_input = _graph_input(model)
    consumers = [n for n in model.graph.node if graph_input.name in n.input]
    if len(consumers) != 1 or consumers[0].op_type != "Transpose":
        return ""
    transpose = consumers[0]
    perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
    dims = graph_input.type.tensor_type.shape.dim
    if perm != NHWC_TO_NCHW or len(dims) != 4:
        return ""
    saved = [type(d)() for d in dims]
    for copy, dim in zip(saved, dims, strict=True):
        copy.CopyFrom(dim)
    for target, source in zip(dims, [saved[i] for i in NHWC_TO_NCHW], strict=True):
        target.CopyFrom(source)
    _rewire(model, transpose.output[0], graph_input.name)
    model.graph.node.remove(transpose)
    return "NHWC input with a leading Transpose made NCHW (the compressed model takes NCHW inputs)"


# radon D: a pattern match, one early exit per node of the pattern that may differ.
def _shape_flatten(model) -> str:
    """Reshape(t, Concat(Unsqueeze(Gather(Shape(t), 0)), [-1])): flatten keeping the batch axis."""
    from onnx import numpy_helper

    producers = {o: n for n in model.graph.node for o in n.output}
    constants = {t.name: t for t in model.graph.initializer}
    rewritten = 0
    for node in list(model.graph.node):
        if node.op_type != "Reshape" or node.input[1] not in producers:
            continue
        concat = producers[node.input[1]]
        if concat.op_type != "Concat" or len(concat.input) != 2 or concat.input[1] not in constants:
            continue
        if numpy_helper.to_array(constants[concat.input[1]]).tolist() != [-1]:
            continue
        unsqueeze = producers.get(concat.input[0])
        is_unsqueeze = unsqueeze is not None and unsqueeze.op_type == "Unsqueeze"
        gather = producers.get(unsqueeze.input[0]) if unsqueeze is not None and is_unsqueeze else None
        shape = producers.get(gather.input[0]) if gather is not None and gather.op_type == "Gather" else None
        if gather is None or shape is None or shape.op_type != "Shape" or shape.input[0] != node.input[0]:
            continue
        index_tensor = constants.get(gather.input[1])
        if index_tensor is None or numpy_helper.to_array(index_tensor).tolist() not in (0, [0]):
            continue
        _as_flatten(model, node)
        rewritten += 1
    return f"{rewritten} Shape→Gather→Concat→Reshape flattens made Flatten" if rewritten else ""


# radon D: a pattern match, one early exit per node of the pattern that may differ.
def _reshape_flatten(model) -> str:
    """Reshape(t, [-1, C·H·W]) or Reshape(t, [0, -1]) of a 4-D t (torch's dynamo exporter for x.view(n, -1)) is a
    Flatten: written so, the flatten follows when channels are removed instead of pinning the old width."""
    import onnx
    from onnx import numpy_helper

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:
        return ""
    shapes = {}
    for info in list(inferred.graph.value_info) + list(inferred.graph.input):
        shapes[info.name] = declared_sizes(info) or []
    constants = {t.name: t for t in model.graph.initializer}
    rewritten = 0
    for node in list(model.graph.node):
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
            continue
        target = numpy_helper.to_array(constants[node.input[1]]).tolist()
        shape = shapes.get(node.input[0])
        if shape is None or len(shape) != 4 or None in shape[1:] or len(target) != 2:
            continue
        allowzero = any(a.name == "allowzero" and a.i for a in node.attribute)
        features = int(np.prod([d for d in shape[1:] if d is not None]))
        if target != [-1, features] and not (target == [0, -1] and not allowzero):
            continue
        _as_flatten(model, node)
        rewritten += 1
    return f"{rewritten} flattening Reshapes made Flatten" if rewritten else ""


def _as_flatten(model, reshape) -> None:
    """`reshape` replaced in place by Flatten(axis=1) of its data input."""
    from onnx import helper

    index = list(model.graph.node).index(reshape)
    model.graph.node.remove(reshape)
    model.graph.node.insert(
        index, helper.make_node("Flatten", [reshape.input[0]], list(reshape.output), axis=1, name=reshape.name)
    )


def _gemm_trans_b(model) -> str:
    """Gemm(A, B) with a constant B and no transB is Gemm(A, Bᵀ, transB=1): torch's Linear stores its weight so."""
    from onnx import helper, numpy_helper

    constants = {t.name: t for t in model.graph.initializer}
    changed = 0
    for node in model.graph.node:
        if node.op_type != "Gemm" or node.input[1] not in constants:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transB", 0) == 1 or attrs.get("transA", 0) == 1:
            continue
        weight = numpy_helper.to_array(constants[node.input[1]])
        name = f"{node.input[1]}_transposed"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), name))
        node.input[1] = name
        _set_attribute(node, "transB", 1)
        changed += 1
    return f"{changed} Gemm weights stored transposed (transB)" if changed else ""


def _matmul_add_to_gemm(model) -> str:
    from onnx import helper, numpy_helper

    constants = {t.name: t for t in model.graph.initializer}
    consumers = _consumers(model)
    changed = 0
    for node in list(model.graph.node):
        if node.op_type != "MatMul" or node.input[1] not in constants:
            continue
        weight = numpy_helper.to_array(constants[node.input[1]])
        users = consumers.get(node.output[0], [])
        if weight.ndim != 2 or len(users) != 1 or users[0].op_type != "Add" or _is_output(model, node.output[0]):
            continue
        add = users[0]
        bias_name = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        bias = numpy_helper.to_array(constants[bias_name]) if bias_name in constants else None
        if bias is None or bias.size != weight.shape[1] or _rank(model, node.input[0]) not in (2, None):
            continue
        weight_name, bias_out = f"{node.input[1]}_gemm", f"{bias_name}_gemm"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), weight_name))
        model.graph.initializer.append(numpy_helper.from_array(bias.reshape(-1).astype(weight.dtype), bias_out))
        index = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.remove(add)
        model.graph.node.insert(
            index,
            helper.make_node(
                "Gemm", [node.input[0], weight_name, bias_out], list(add.output), transB=1, name=node.name or add.name
            ),
        )
        changed += 1
    return f"{changed} MatMul + Add classifiers made Gemm" if changed else ""


def _conv_mul_add(model) -> str:
    """Conv → Mul(per-channel constant) [→ Add(per-channel constant)]: BatchNorm an exporter folded only halfway."""
    from onnx import numpy_helper

    folded = 0
    while True:
        constants = {t.name: t for t in model.graph.initializer}
        consumers = _consumers(model)
        for conv in model.graph.node:
            computed_bias = len(conv.input) > 2 and conv.input[2] and conv.input[2] not in constants
            if conv.op_type != "Conv" or conv.input[1] not in constants or computed_bias:
                continue
            if _is_output(model, conv.output[0]):
                continue
            users = consumers.get(conv.output[0], [])
            if len(users) != 1 or users[0].op_type not in ("Mul", "Add"):
                continue
            user = users[0]
            other = user.input[1] if user.input[0] == conv.output[0] else user.input[0]
            weight = numpy_helper.to_array(constants[conv.input[1]])
            value = _per_channel(constants.get(other), weight.shape[0])
            if value is None:
                continue
            bias = (
                numpy_helper.to_array(constants[conv.input[2]])
                if len(conv.input) > 2 and conv.input[2]
                else np.zeros(weight.shape[0], weight.dtype)
            )
            if user.op_type == "Mul":
                weight, bias = weight * value.reshape(-1, *([1] * (weight.ndim - 1))), bias * value
            else:
                bias = bias + value
            tag = f"{conv.name or conv.output[0]}_folded{folded}"
            model.graph.initializer.extend(
                [
                    numpy_helper.from_array(weight.astype(np.float32), f"{tag}_w"),
                    numpy_helper.from_array(bias.astype(np.float32), f"{tag}_b"),
                ]
            )
            conv.input[1] = f"{tag}_w"
            if len(conv.input) > 2:
                conv.input[2] = f"{tag}_b"
            else:
                conv.input.append(f"{tag}_b")
            _rewire(model, user.output[0], conv.output[0])
            model.graph.node.remove(user)
            folded += 1
            break
        else:
            break
    if not folded:
        return ""
    return f"{folded} per-channel Mul/Add after convolutions folded into them (BatchNorm as Mul + Add)"


def _per_channel(tensor, channels: int) -> np.ndarray | None:
    """A constant that broadcasts per output channel of an NCHW feature map: shape (1, C, 1, 1), (C, 1, 1) or scalar."""
    from onnx import numpy_helper

    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    if value.dtype.kind != "f":
        return None
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]), np.float32)
    if value.ndim in (3, 4) and value.size == channels and value.shape[-3] == channels and value.shape[-2:] == (1, 1):
        return value.reshape(-1)
    return None


def _hardswish(model) -> str:
    """x · Clip(x + 3, 0, 6) / 6 and x · HardSigmoid(x, 1/6, 1/2) are HardSwish(x) (opset 14 on)."""
    from onnx import helper

    if _opset(model) < 14:
        return ""
    producers = {o: n for n in model.graph.node for o in n.output}
    consumers = _consumers(model)
    replaced = 0
    for node in list(model.graph.node):
        if node.op_type != "Mul" or node not in model.graph.node:
            continue
        match = _hardswish_match(model, node, producers)
        if match is None:
            continue
        x, remove, output = match
        if any(len(consumers.get(n.output[0], [])) != 1 for n in remove if n.output[0] != output):
            continue
        index = min(list(model.graph.node).index(n) for n in remove)
        for n in remove:
            model.graph.node.remove(n)
        model.graph.node.insert(index, helper.make_node("HardSwish", [x], [output], name=node.name))
        replaced += 1
    return f"{replaced} hard-swish subgraphs made HardSwish" if replaced else ""


# radon D: a pattern match, one early exit per node of the pattern that may differ (two spellings of it).
def _hardswish_match(model, mul, producers):
    """(x, nodes to remove, output name) when `mul` starts a hard-swish subgraph."""
    from onnx import helper

    constants = {t.name: t for t in model.graph.initializer}
    for x, gate_name in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
        gate = producers.get(gate_name)
        if gate is None:
            continue
        if gate.op_type == "HardSigmoid":
            attrs = {a.name: helper.get_attribute_value(a) for a in gate.attribute}
            alpha, beta = attrs.get("alpha", 0.2), attrs.get("beta", 0.5)
            if gate.input[0] == x and abs(alpha - 1 / 6) < 1e-6 and abs(beta - 0.5) < 1e-6:
                return x, [gate, mul], mul.output[0]
        if gate.op_type == "Clip" and _clip_bounds(gate, constants) == (0.0, 6.0):
            add = producers.get(gate.input[0])
            if add is None or add.op_type != "Add" or x not in add.input:
                continue
            three = add.input[1] if add.input[0] == x else add.input[0]
            if _scalar(constants.get(three)) != 3.0:
                continue
            divide = [n for n in model.graph.node if n.op_type == "Div" and n.input[0] == mul.output[0]]
            if len(divide) == 1 and _scalar(constants.get(divide[0].input[1])) == 6.0:
                return x, [add, gate, mul, divide[0]], divide[0].output[0]
    return None


def _clip_bounds(clip, constants) -> tuple[float | None, float | None]:
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in clip.attribute}
    low = _scalar(constants.get(clip.input[1])) if len(clip.input) > 1 and clip.input[1] else attrs.get("min")
    high = _scalar(constants.get(clip.input[2])) if len(clip.input) > 2 and clip.input[2] else attrs.get("max")
    return (None if low is None else float(low)), (None if high is None else float(high))


def _scalar(tensor) -> float | None:
    from onnx import numpy_helper

    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    return float(value.reshape(-1)[0]) if value.size == 1 else None


def _optimize(model) -> str:
    """onnxoptimizer's identity and dead-end passes: what the rewrites above left unused goes."""
    try:
        import onnxoptimizer
    except ImportError:
        return _drop_dead_nodes(model)
    before = len(model.graph.node)
    try:
        optimized = onnxoptimizer.optimize(
            model,
            ["eliminate_identity", "eliminate_deadend", "eliminate_unused_initializer", "eliminate_nop_transpose"],
        )
    except Exception:
        return _drop_dead_nodes(model)
    model.CopyFrom(optimized)
    removed = before - len(model.graph.node)
    return f"{removed} identity or unused nodes removed" if removed > 0 else ""


def _drop_dead_nodes(model) -> str:
    needed = {o.name for o in model.graph.output}
    kept = []
    for node in reversed(list(model.graph.node)):
        if set(node.output) & needed:
            kept.append(node)
            needed.update(node.input)
    removed = len(model.graph.node) - len(kept)
    del model.graph.node[:]
    model.graph.node.extend(reversed(kept))
    used = [t for t in model.graph.initializer if t.name in needed]
    del model.graph.initializer[:]
    model.graph.initializer.extend(used)
    return f"{removed} unused nodes removed" if removed else ""


def _infer_shapes(model) -> str:
    import onnx

    try:
        model.CopyFrom(onnx.shape_inference.infer_shapes(model))
    except Exception:
        pass
    return ""


# -- helpers ----------------------------------------------------------------------------------------------------


def _graph_input(model):
    names = {t.name for t in model.graph.initializer}
    return next(i for i in model.graph.input if i.name not in names)


def _consumers(model) -> dict[str, list]:
    users: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    return users


def _is_output(model, name: str) -> bool:
    return any(o.name == name for o in model.graph.output)


def _rewire(model, old: str, new: str) -> None:
    """Every reader of `old` reads `new`; a graph output named `old` is produced under its own name again."""
    if _is_output(model, old):
        from onnx import helper

        model.graph.node.append(helper.make_node("Identity", [new], [old]))
        return
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _set_attribute(node, name: str, value) -> None:
    from onnx import helper

    for attribute in list(node.attribute):
        if attribute.name == name:
            node.attribute.remove(attribute)
    node.attribute.append(helper.make_attribute(name, value))


def _rank(model, name: str) -> int | None:
    for info in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        if info.name == name and info.type.tensor_type.HasField("shape"):
            return len(info.type.tensor_type.shape.dim)
    return None


def _stand_in(original) -> np.ndarray | None:
    """Random inputs at the original's declared size, a small stand-in for each free axis; None without a rank."""
    sizes = declared_sizes(_graph_input(original))
    if sizes is None:
        return None
    shape = [size or (2 if axis == 0 else 32) for axis, size in enumerate(sizes)]
    return np.random.default_rng(0).standard_normal(shape).astype(np.float32)


def _agreement(original: bytes, result: Normalised, x: np.ndarray) -> bool | None:
    """Whether the normalised graph computes what the original did on `x` (in the original's layout) under
    onnxruntime; None when the original does not run on `x` (a size it does not take, or no graph onnxruntime runs:
    the intake's own checks name that)."""
    import onnxruntime

    try:
        before = _run(onnxruntime, original, x)
    except Exception:
        return None
    try:
        after = _run(onnxruntime, result.serialized(), x.transpose(NHWC_TO_NCHW) if result.input_layout_changed else x)
    except Exception:
        return False
    if before.shape != after.shape:
        return False
    return float(np.abs(before - after).max()) <= _PARITY_TOLERANCE * max(1.0, float(np.abs(before).max()))


def _run(onnxruntime, data: bytes, x: np.ndarray) -> np.ndarray:
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # a stand-in size the graph rejects is an expected outcome, not a log line
    session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    run_options = onnxruntime.RunOptions()
    run_options.log_severity_level = 3
    return np.asarray(session.run(None, {session.get_inputs()[0].name: x}, run_options)[0])
