"""A latency table of a model's convolutions on the target runtime (issue 28, item 2): each convolution's time at a
few input and output channel counts, measured as a one-layer ONNX graph in onnxruntime, so a pruner can ask what
removing channels saves where the model is deployed instead of assuming time follows MACs.

Layers of the same geometry (a ResNet stage repeats one) are measured once. The variants of all layers are timed in
alternating rounds in one process after a warm-up, and each point is the median over rounds, so a load change on
the machine shifts every point alike. What a run of any graph costs (about 5 µs here: most of a narrow layer's
measured time) is timed on an empty graph in the same rounds and taken off, since a layer inside the model does not
pay it; left in, it makes narrow layers look slow, so predicted speed-ups fall short and the planner cuts past its
target. Between the measured counts the table interpolates linearly in each axis.

Channel counts are rounded to multiples the runtime runs fastest (`allowed_counts`). Measured on this project's
CPU (AVX-512, onnxruntime 1.32, one thread, 3×3 convolution at 32×32): time is flat within each block of 16
output channels (17 to 32 cost the same, 33 costs 40 % more than 32), and input counts that are multiples of 4 run
up to 40 % faster than their neighbours; so counts are multiples of 16, or of 4 for layers narrower than 32.

The table is data: it is cached as JSON under a key derived from the layers' geometry, the runtime and its thread
count, in a folder the caller owns (a job's own folder), never a path taken from an upload.
"""

import bisect
import hashlib
import json
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from squeezer.core.errors import InputError
from squeezer.core.graph import ChannelGraph

RUNTIMES = ("onnxruntime-cpu",)
_OPSET = 17
_MEASURE_VERSION = 2  # part of the cache key: tables measured another way are not reused
_MIN_SHARE = 0.05  # a layer's time never falls below this share of its measured time when the fixed cost is taken off


@dataclass(frozen=True)
class Runtime:
    """Where the model will run: the runtime's name and its intra-op thread count."""

    name: str = "onnxruntime-cpu"
    threads: int = 1
    batch: int = 1

    def __post_init__(self):
        if self.name not in RUNTIMES:
            raise InputError(
                f"latency target {self.name!r} is not available here; known: {', '.join(RUNTIMES)}",
                code="unknown_runtime",
            )
        if self.threads < 1 or self.batch < 1:
            raise InputError("runtime threads and batch must be at least 1", code="invalid_runtime")


@dataclass(frozen=True)
class Geometry:
    """What a convolution's time depends on, besides its channel counts."""

    transposed: bool
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    depthwise: bool
    spatial: tuple[int, ...]  # the input's spatial size
    in_channels: int
    out_channels: int
    inputs_fixed: bool = False  # channels the graph cannot remove are measured at their full count only
    outputs_fixed: bool = False

    def key(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass
class LayerLatency:
    """Measured milliseconds of one geometry at each (input count, output count) of the grid; a depthwise layer has
    one axis (`inputs` equals `outputs`, and only the diagonal is measured)."""

    inputs: list[int]
    outputs: list[int]
    milliseconds: list[list[float]]  # [input index][output index]
    depthwise: bool = False

    def at(self, in_count: int, out_count: int) -> float:
        """Milliseconds at any counts, interpolated linearly between the measured ones (clamped at the ends)."""
        if self.depthwise:
            return _interpolate(self.outputs, [self.milliseconds[i][i] for i in range(len(self.outputs))], out_count)
        rows = [_interpolate(self.outputs, row, out_count) for row in self.milliseconds]
        return _interpolate(self.inputs, rows, in_count)


@dataclass
class LatencyTable:
    """Per convolution name, its geometry's measured latencies; `layers` maps a layer name to a geometry key."""

    runtime: Runtime
    layers: dict[str, str] = field(default_factory=dict)
    geometries: dict[str, LayerLatency] = field(default_factory=dict)
    seconds: float = 0.0  # what measuring it took

    def layer_ms(self, name: str, in_count: int, out_count: int) -> float:
        return self.geometries[self.layers[name]].at(in_count, out_count)

    def to_json(self) -> str:
        return json.dumps(
            {
                "runtime": asdict(self.runtime),
                "layers": self.layers,
                "geometries": {key: asdict(value) for key, value in self.geometries.items()},
                "seconds": self.seconds,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> "LatencyTable":
        raw = json.loads(text)
        return cls(
            Runtime(**raw["runtime"]),
            dict(raw["layers"]),
            {key: LayerLatency(**value) for key, value in raw["geometries"].items()},
            float(raw["seconds"]),
        )


def _interpolate(points: list[int], values: list[float], x: float) -> float:
    if x <= points[0]:
        return values[0]
    if x >= points[-1]:
        return values[-1]
    right = bisect.bisect_right(points, x)
    left = right - 1
    share = (x - points[left]) / (points[right] - points[left])
    return values[left] + share * (values[right] - values[left])


def channel_multiple(full: int) -> int:
    """The count multiple the runtime runs fastest for a layer of `full` channels (see the module docstring)."""
    if full >= 32:
        return 16
    return 4 if full >= 8 else 1


def allowed_counts(full: int) -> list[int]:
    """Counts a layer of `full` channels may keep, ascending: multiples of `channel_multiple`, and `full` itself."""
    step = channel_multiple(full)
    return sorted({*range(step, full + 1, step), full})


def grid_counts(full: int, points: int, fixed: bool = False) -> list[int]:
    """At most `points` of the allowed counts, spread evenly and always including the smallest and `full`; only
    `full` when the count cannot change."""
    counts = [full] if fixed else allowed_counts(full)
    if len(counts) <= points:
        return counts
    picks = {counts[round(i * (len(counts) - 1) / (points - 1))] for i in range(points)}
    return sorted(picks)


def convolution_geometries(
    module: nn.Module, input_shape: tuple[int, ...], graph: ChannelGraph | None = None
) -> dict[str, Geometry]:
    """The 2-d convolutions (plain and transposed) of `module` and their geometry, from one forward pass; with the
    traced `graph`, a side whose channels are all frozen (the model's input or output) is marked fixed."""
    found: dict[str, Geometry] = {}

    def fixed(ids) -> bool:
        return graph is not None and all(root in graph.frozen for root in graph.root(ids).tolist())

    def record(name: str):
        def hook(layer, inputs, output):
            depthwise = layer.groups > 1 and layer.groups == layer.in_channels == layer.out_channels
            found[name] = Geometry(
                isinstance(layer, nn.ConvTranspose2d),
                tuple(layer.kernel_size),
                tuple(layer.stride),
                tuple(layer.padding) if not isinstance(layer.padding, str) else (0, 0),
                tuple(layer.dilation),
                depthwise,
                tuple(inputs[0].shape[2:]),
                layer.in_channels,
                layer.out_channels,
                graph is not None and (name not in graph.consumers or fixed(graph.consumers[name])),
                graph is not None and (name not in graph.producers or fixed(graph.producers[name])),
            )

        return hook

    handles = [
        layer.register_forward_hook(record(name))
        for name, layer in module.named_modules()
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d))
        and isinstance(layer.padding, tuple)
        and (layer.groups == 1 or layer.groups == layer.in_channels == layer.out_channels)
    ]
    was_training = module.training
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(1, *input_shape))
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return found


def table_key(geometries: dict[str, Geometry], runtime: Runtime, points: int) -> str:
    """A digest of what the table depends on: every layer's geometry, the runtime, its threads and the grid."""
    import onnxruntime

    text = json.dumps(
        [
            sorted((n, g.key()) for n, g in geometries.items()),
            asdict(runtime),
            points,
            onnxruntime.__version__,
            _MEASURE_VERSION,
        ]
    )
    return hashlib.sha256(text.encode()).hexdigest()


_MEMORY: dict[str, LatencyTable] = {}


def latency_table(
    module: nn.Module,
    input_shape: tuple[int, ...],
    runtime: Runtime = Runtime(),
    *,
    graph: ChannelGraph | None = None,
    points: int = 4,
    rounds: int = 15,
    cache_dir: Path | None = None,
) -> LatencyTable:
    """The latency table of `module`'s convolutions on `runtime`: from memory, from `cache_dir` (a folder the
    caller owns), or measured (`points` counts per axis, `rounds` alternating rounds after one warm-up round). With
    the traced `graph`, counts that cannot change are not measured."""
    geometries = convolution_geometries(module, input_shape, graph)
    key = table_key(geometries, runtime, points)
    cached = cache_dir / f"latency-{key[:32]}.json" if cache_dir is not None else None
    if key in _MEMORY:
        return _MEMORY[key]
    if cached is not None and cached.is_file():
        table = LatencyTable.from_json(cached.read_text())
    else:
        table = measure_table(geometries, runtime, points=points, rounds=rounds)
        if cached is not None:
            cached.parent.mkdir(parents=True, exist_ok=True)
            cached.write_text(table.to_json())
    _MEMORY[key] = table
    return table


def measure_table(geometries: dict[str, Geometry], runtime: Runtime, *, points: int, rounds: int) -> LatencyTable:
    """Measures every distinct geometry at its grid of counts, all variants timed in alternating rounds."""
    started = time.perf_counter()
    distinct = {g.key(): g for g in geometries.values()}
    variants: list[tuple[str, int, int]] = []
    for key, geometry in distinct.items():
        ins, outs = _grid(geometry, points)
        if geometry.depthwise:
            variants += [(key, count, count) for count in outs]
        else:
            variants += [(key, i, o) for i in ins for o in outs]
    timings = _time_variants([(distinct[k], i, o) for k, i, o in variants], runtime, rounds)
    measured = dict(zip(variants, timings, strict=True))
    table = LatencyTable(runtime, {name: g.key() for name, g in geometries.items()})
    for key, geometry in distinct.items():
        ins, outs = _grid(geometry, points)
        grid = [[measured.get((key, i, o), 0.0) for o in outs] for i in ins]
        table.geometries[key] = LayerLatency(ins, outs, grid, geometry.depthwise)
    table.seconds = time.perf_counter() - started
    return table


def _grid(geometry: Geometry, points: int) -> tuple[list[int], list[int]]:
    """The input and output counts to measure (a depthwise layer's are the same)."""
    outs = grid_counts(geometry.out_channels, points, geometry.outputs_fixed)
    if geometry.depthwise:
        return outs, outs
    return grid_counts(geometry.in_channels, points, geometry.inputs_fixed), outs


def _time_variants(variants: list[tuple[Geometry, int, int]], runtime: Runtime, rounds: int) -> list[float]:
    """Median milliseconds of each variant's convolution over `rounds` rounds, each round running every variant once
    and, for each input shape, an empty graph: its median (the runtime's fixed cost per run, about 5 µs here,
    which a layer inside a whole model does not pay) is taken off the variants of that input shape."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = runtime.threads
    options.inter_op_num_threads = 1
    rng = np.random.default_rng(0)
    inputs = sorted({(in_count, geometry.spatial) for geometry, in_count, _ in variants})
    graphs = [_conv_graph(geometry, in_count, out_count) for geometry, in_count, out_count in variants]
    graphs += [_empty_graph(count, spatial) for count, spatial in inputs]
    shapes = [(in_count, geometry.spatial) for geometry, in_count, _ in variants] + inputs
    sessions = [ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"]) for graph in graphs]
    feeds = [
        {"x": rng.standard_normal((runtime.batch, count, *spatial), dtype=np.float32)} for count, spatial in shapes
    ]
    times: list[list[float]] = [[] for _ in sessions]
    for round_index in range(rounds + 1):
        for index, (session, feed) in enumerate(zip(sessions, feeds, strict=True)):
            start = time.perf_counter()
            session.run(None, feed)
            if round_index:  # the first round warms up
                times[index].append(1000.0 * (time.perf_counter() - start))
    medians = [statistics.median(t) for t in times]
    fixed = dict(zip(inputs, medians[len(variants) :], strict=True))
    return [
        max(measured - fixed[shape], _MIN_SHARE * measured)
        for measured, shape in zip(medians[: len(variants)], shapes[: len(variants)], strict=True)
    ]


def _empty_graph(count: int, spatial: tuple[int, ...]) -> bytes:
    """A graph that only hands its input back: what one run costs besides the layer."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["z"])],
        "empty",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, count, *spatial])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)]).SerializeToString()


def _conv_graph(geometry: Geometry, in_count: int, out_count: int) -> bytes:
    """A one-layer ONNX model: the convolution (with bias, as batch norm folds into it) and a ReLU after it."""
    from onnx import TensorProto, helper, numpy_helper

    groups = in_count if geometry.depthwise else 1
    if geometry.transposed:
        shape = (in_count, out_count // groups, *geometry.kernel)
    else:
        shape = (out_count, in_count // groups, *geometry.kernel)
    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), "w")
    bias = numpy_helper.from_array(np.zeros(out_count, np.float32), "b")
    node = helper.make_node(
        "ConvTranspose" if geometry.transposed else "Conv",
        ["x", "w", "b"],
        ["y"],
        kernel_shape=list(geometry.kernel),
        strides=list(geometry.stride),
        pads=list(geometry.padding) * 2,
        dilations=list(geometry.dilation),
        group=groups,
    )
    graph = helper.make_graph(
        [node, helper.make_node("Relu", ["y"], ["z"])],
        "layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, in_count, *geometry.spatial])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
        [weight, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)]).SerializeToString()
