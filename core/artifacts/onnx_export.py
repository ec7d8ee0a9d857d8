"""ONNX export of a compressed model, as small as the compression made it, so it runs anywhere onnxruntime does.

torch.onnx writes every weight as dense float32, so a ternary or float16 model would come out exactly as large as
the original. `compact_onnx` rewrites each weight initializer into the smallest *exact* standard form:

- a tensor whose every output channel is a small integer multiple of one scale (lwct's ternary {−σ, 0, +σ}, also
  after a BatchNorm was folded into it, which makes σ per channel) becomes int4 codes (int8 when the codes do not
  fit in 4 bits) and a per-tensor or per-channel scale, decoded by `Cast` and `Mul`;
- a tensor whose values are all exact in float16 (lwct's `float_precision`) is stored in float16 and `Cast`;
- anything else stays float32.

Every rewrite is checked to decode to the same bits, so the file computes what the `.sqz` model computes. onnxruntime
folds Cast and Mul of initializers into constants when the session starts, so the file runs as fast as the float32
one; `DequantizeLinear` was measured first and is not folded (onnxruntime keeps it for its QDQ fusions): it ran at
every inference, 0.036 against 0.012 ms at batch 1 on the digits LeNet-5. int4 needs opset 21 (onnxruntime ≥ 1.20
on CPU); the graph is converted to it only when an int4 initializer is written. int2 also decodes in onnxruntime
1.32 (opset 25) but is left out: few deployed runtimes read it yet.
"""

import io
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from squeezer.core.artifacts.sqz import grid_scales
from squeezer.core.events import StopCheck, stop_point
from squeezer.core.intake.onnx_normalize import declared_sizes

OPSET = 17
INT4_OPSET = 21  # the first opset with int4 tensors
MIN_ELEMENTS = 64  # below this a rewrite's extra node and scale cost more than they save
_CODE_TYPES = ((7, TensorProto.INT4), (127, TensorProto.INT8))  # (largest |code|, element type), smallest first


def module_onnx(module: torch.nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """`module` as ONNX bytes with a free batch axis, for timing against another module (its mode is kept)."""
    buffer = io.BytesIO()
    training = module.training
    try:
        torch.onnx.export(
            module.eval(),
            (torch.zeros(1, *input_shape),),
            buffer,  # type: ignore[arg-type]  # torch writes to any binary file object; its stub names paths only
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,
        )
    finally:
        module.train(training)
    return buffer.getvalue()


def export_onnx(model, path: Path, *, compact: bool = True, should_stop: StopCheck | None = None) -> Path:
    """Writes `model.module` (a LoadedModel) to `path` with a dynamic batch axis (and dynamic spatial axes where the
    uploaded ONNX graph had them), compacted unless `compact` is False.

    Preprocessing is not baked in: it lives in architecture.json, and `squeezer evaluate`
    applies it to .onnx inputs the same way it does for model.sqz and model/. `should_stop` is checked before each
    weight is compacted.
    """
    if model.input_shape is None:
        raise ValueError("export_onnx needs the model's input_shape")
    example = torch.zeros(1, *model.input_shape)
    torch.onnx.export(
        model.module.eval(),
        (example,),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes=_dynamic_axes(model, example),
        opset_version=OPSET,
        dynamo=False,
    )
    if compact:
        onnx.save(compact_onnx(onnx.load(str(path)), should_stop), str(path))
    return Path(path)


def _dynamic_axes(model, example: torch.Tensor) -> dict[str, dict[int, str]]:
    """Named free axes (dim_param, what every runtime reads as free): the batch always; height and width when the
    uploaded ONNX graph left them to the data, and then a segmentation map's too."""
    axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    if not model.onnx_graph:
        return axes
    graph = onnx.load_model_from_string(model.onnx_graph).graph
    initializers = {t.name for t in graph.initializer}
    sizes = declared_sizes(next(i for i in graph.input if i.name not in initializers))
    free = [axis for axis in (2, 3) if sizes is None or len(sizes) != 4 or sizes[axis] is None]
    if free:
        axes["input"] |= {axis: ("height", "width")[axis - 2] for axis in free}
        with torch.no_grad():
            if model.module.eval()(example).ndim == 4:
                axes["logits"] |= {axis: ("out_height", "out_width")[axis - 2] for axis in free}
    return axes


def integer_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(codes, scales, element type) with codes[c] * scales[c] == values[c] bit for bit along axis 0, or None.

    Scales tried: each output channel's smallest nonzero magnitude (ternary channels get codes in {−1, 0, 1}, also
    when a folded BatchNorm made σ per channel), then the per-tensor scales of the integer grids lwct stores float
    layers on (`core.artifacts.sqz.grid_scales`: int8 … int4, whose smallest code need not be ±1)."""
    channels = values.reshape(len(values), -1) if values.ndim > 1 else values.reshape(1, -1)
    magnitudes = np.abs(channels)
    smallest = np.where(magnitudes > 0, magnitudes, np.inf).min(axis=1)
    if not np.isfinite(smallest).any():
        return None  # all zeros: float16 stores it as well, without a scale
    per_channel = np.where(np.isfinite(smallest), smallest, smallest[np.isfinite(smallest)][0]).astype(np.float32)
    candidates = [per_channel] + [np.array([scale], np.float32) for scale in grid_scales(magnitudes.max())]
    for scales in candidates:
        codes = np.rint(channels / scales[:, None])
        largest = np.abs(codes).max()
        element_type = next((kind for bound, kind in _CODE_TYPES if largest <= bound), None)
        decoded = (codes.astype(np.float32) * scales[:, None]).astype(np.float32)
        if element_type is not None and np.array_equal(decoded, channels):  # == takes −0.0 for 0.0: a zero weight's
            if values.ndim <= 1 or np.all(scales == scales[0]):  # sign changes no output
                scales = scales[:1]
            return codes.astype(np.int8).reshape(values.shape), scales, element_type
    return None


def _raw_codes(codes: np.ndarray, element_type: int) -> bytes:
    """ONNX's raw layout: int8 one byte each; int4 two to a byte, the first element in the low nibble."""
    flat = codes.flatten().astype(np.uint8)
    if element_type == TensorProto.INT8:
        return flat.tobytes()
    nibbles = np.append(flat & 0x0F, np.uint8(0)) if len(flat) % 2 else flat & 0x0F
    return (nibbles[0::2] | (nibbles[1::2] << 4)).tobytes()


Rewrite = tuple[list, list, int]  # initializers, the nodes that rebuild the float32 tensor from them, opset needed


def _decoded(prefix: str, stored: np.ndarray, element_type: int, output: str) -> tuple[list, list]:
    """An initializer holding `stored` as `element_type` (int4/int8 codes, float16 or float32) and the Cast that
    makes `output` float32 from it (no Cast for float32)."""
    if element_type == TensorProto.FLOAT:
        return [numpy_helper.from_array(stored.astype(np.float32), output)], []
    if element_type == TensorProto.FLOAT16:
        init = numpy_helper.from_array(stored.astype(np.float16), f"{prefix}.float16")
    else:
        init = helper.make_tensor(
            f"{prefix}.codes", element_type, stored.shape, _raw_codes(stored, element_type), raw=True
        )
    return [init], [helper.make_node("Cast", [init.name], [output], to=TensorProto.FLOAT)]


def _rescaled(name: str, scales: np.ndarray, ndim: int) -> tuple[list, list]:
    """The Mul by the per-tensor or per-output-channel scale that turns `name`.unscaled into `name`."""
    shaped = scales.reshape(-1, *[1] * (ndim - 1)) if len(scales) > 1 else scales.reshape(())
    scale = numpy_helper.from_array(shaped, f"{name}.scale")
    return [scale], [helper.make_node("Mul", [f"{name}.unscaled", scale.name], [name])]


def _dense(name: str, values: np.ndarray, storage: tuple) -> Rewrite:
    """Every value stored: codes × scale, or float16."""
    codes, scales, element_type = storage
    if codes is None:
        initializers, nodes = _decoded(name, values, element_type, name)
        return initializers, nodes, OPSET
    initializers, nodes = _decoded(name, codes, element_type, f"{name}.unscaled")
    scale, rescale = _rescaled(name, scales, values.ndim)
    return initializers + scale, nodes + rescale, INT4_OPSET if element_type == TensorProto.INT4 else OPSET


def _bounded_gaps(gaps: np.ndarray, stored: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """`gaps` split so that none exceeds `limit`, by explicit zeros every `limit` positions across a longer gap."""
    extra = np.maximum(0, -(-gaps // limit) - 1)  # zeros to insert before each entry
    if not extra.any():
        return gaps, stored
    owner = np.repeat(np.arange(len(gaps)), extra + 1)  # the original entry each new one belongs to
    rank = np.arange(len(owner)) - (np.cumsum(extra + 1) - (extra + 1))[owner]
    last = rank == extra[owner]
    return np.where(last, gaps[owner] - extra[owner] * limit, limit), np.where(last, stored[owner], 0)


# 61 lines: the three layouts share the gap encoding and the rebuilding nodes; one place keeps them in step.
def _sparse(name: str, values: np.ndarray, storage: tuple, layout: str) -> Rewrite | None:
    """Only the nonzeros stored, with the gaps between their positions; CumSum, ConstantOfShape and ScatterElements
    rebuild the dense tensor, all folded into a constant by onnxruntime at session start. `layout`: "wide", gaps as
    the smallest unsigned integers that hold them, values as codes, float16 or float32; "bytes", the same with gaps
    as bytes (longer gaps bridged by explicit zeros); "packed", for codes of at most 8 distinct values (ternary:
    −1, 0, +1), one byte per entry holding gap × K + the value's index in a K-entry table."""
    codes, scales, element_type = storage
    flat = values.ravel()
    positions = np.flatnonzero(flat)
    if len(positions) == 0:
        return None
    gaps = np.diff(positions, prepend=0)
    gaps[0] = positions[0]  # so that the cumulative sum is the positions themselves
    stored = (flat if codes is None else codes.ravel())[positions]
    table = np.unique(np.append(stored, 0))
    if layout == "packed" and (codes is None or len(table) > 8):
        return None
    limit = {"wide": None, "bytes": 255, "packed": 256 // len(table) - 1}[layout]  # packed: gap × K + K − 1 ≤ 255
    if limit is not None:
        gaps, stored = _bounded_gaps(gaps, stored, limit)
    initializers = [
        numpy_helper.from_array(np.array(0, np.int64), f"{name}.axis"),
        numpy_helper.from_array(np.array([flat.size], np.int64), f"{name}.size"),
        numpy_helper.from_array(np.array(values.shape, np.int64), f"{name}.shape"),
    ]
    if layout == "packed":
        entries = gaps * len(table) + np.searchsorted(table, stored)
        initializers += [
            numpy_helper.from_array(entries.astype(np.uint8), f"{name}.entries"),
            numpy_helper.from_array(np.array(len(table), np.int64), f"{name}.k"),
            numpy_helper.from_array(table.astype(np.float32), f"{name}.table"),
        ]
        gather = [
            helper.make_node("Cast", [f"{name}.entries"], [f"{name}.entries64"], to=TensorProto.INT64),
            helper.make_node("Div", [f"{name}.entries64", f"{name}.k"], [f"{name}.gaps64"]),
            helper.make_node("Mod", [f"{name}.entries64", f"{name}.k"], [f"{name}.index"]),
            helper.make_node("Gather", [f"{name}.table", f"{name}.index"], [f"{name}.nonzeros"]),
        ]
        value_inits: list[TensorProto] = []
        decode = gather
    else:
        gap_type = next(t for t in (np.uint8, np.uint16, np.uint32) if gaps.max() <= np.iinfo(t).max)
        initializers.append(numpy_helper.from_array(gaps.astype(gap_type), f"{name}.gaps"))
        value_inits, decode = _decoded(name, stored, element_type, f"{name}.nonzeros")
        decode = [helper.make_node("Cast", [f"{name}.gaps"], [f"{name}.gaps64"], to=TensorProto.INT64), *decode]
    output = name if codes is None else f"{name}.unscaled"
    zero = numpy_helper.from_array(np.zeros(1, np.float32))
    nodes = [
        *decode,
        helper.make_node("CumSum", [f"{name}.gaps64", f"{name}.axis"], [f"{name}.positions"]),
        helper.make_node("ConstantOfShape", [f"{name}.size"], [f"{name}.zeros"], value=zero),
        helper.make_node(
            "ScatterElements", [f"{name}.zeros", f"{name}.positions", f"{name}.nonzeros"], [f"{name}.flat"], axis=0
        ),
        helper.make_node("Reshape", [f"{name}.flat", f"{name}.shape"], [output]),
    ]
    initializers += value_inits
    if codes is not None:
        scale, rescale = _rescaled(name, scales, values.ndim)
        initializers, nodes = initializers + scale, nodes + rescale
    return initializers, nodes, INT4_OPSET if element_type == TensorProto.INT4 and layout != "packed" else OPSET


def _size(rewrite: Rewrite) -> int:
    initializers, nodes, _ = rewrite
    return sum(init.ByteSize() for init in initializers) + sum(node.ByteSize() for node in nodes)


def _dequantize_nodes(name: str, values: np.ndarray) -> Rewrite | None:
    """Initializers and nodes that rebuild float32 `values` under `name` from the smallest exact storage (dense or
    nonzeros only), and the opset they need; None when float32 is already the smallest."""
    found = integer_codes(values) if values.ndim >= 1 else None
    if found is not None:
        storage: tuple = found
    elif np.array_equal(values.astype(np.float16).astype(np.float32), values):
        storage = (None, None, TensorProto.FLOAT16)
    else:
        storage = (None, None, TensorProto.FLOAT)
    candidates = [_sparse(name, values, storage, layout) for layout in ("wide", "bytes", "packed")]
    if storage[2] != TensorProto.FLOAT:
        candidates.append(_dense(name, values, storage))
    smaller = [c for c in candidates if c is not None and _size(c) < values.nbytes]
    return min(smaller, key=_size) if smaller else None


def compact_onnx(proto: onnx.ModelProto, should_stop: StopCheck | None = None) -> onnx.ModelProto:
    """`proto` with every float32 initializer of at least MIN_ELEMENTS values in its smallest exact storage, each
    after a `should_stop` check."""
    rewrites = {}
    for initializer in proto.graph.initializer:
        stop_point(should_stop)
        if initializer.data_type == TensorProto.FLOAT and np.prod(initializer.dims) >= MIN_ELEMENTS:
            rewrite = _dequantize_nodes(initializer.name, numpy_helper.to_array(initializer))
            if rewrite is not None:
                rewrites[initializer.name] = rewrite
    if not rewrites:
        return proto
    opset = max(needed for _, _, needed in rewrites.values())
    if opset > OPSET:  # converted while every initializer is still float32, which the converter reads
        from onnx import version_converter

        proto = version_converter.convert_version(proto, opset)
    graph = proto.graph
    kept = [init for init in graph.initializer if init.name not in rewrites]
    inputs = [value for value in graph.input if value.name not in rewrites]
    body = list(graph.node)
    del graph.initializer[:], graph.input[:], graph.node[:]
    graph.initializer.extend(kept + [init for initializers, _, _ in rewrites.values() for init in initializers])
    graph.input.extend(inputs)
    graph.node.extend([node for _, decode, _ in rewrites.values() for node in decode] + body)
    onnx.checker.check_model(proto)
    return proto
