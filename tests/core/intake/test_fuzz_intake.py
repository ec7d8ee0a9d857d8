"""Intake fuzzed (issue 27): Hypothesis builds small valid ONNX classifiers and segmenters and varies what exporters
vary (how free axes are written, opsets, initializers listed as inputs, value_info, Cast/Identity chains on weights,
names, doc strings, metadata), then feeds each through intake, `evaluate` and a one-stage compress. Every case
either works or is refused with a stable code; none crashes. The generated files are all ones Squeezer takes, but for
a second output (refused: one output, the logits), so the test also holds every other case to working.

CI runs the COVERING cases, which between them give every choice each of its values, then FUZZ_EXAMPLES drawn cases,
derandomised (the same cases every run); SQUEEZER_FUZZ_EXAMPLES=N draws N cases, and SQUEEZER_FUZZ_SEED=S draws them
at random from seed S (a larger or a new search)."""

import dataclasses
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, example, given, seed, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from squeezer.core.config import AccuracyTarget, CompressConfig, LwctConfig
from squeezer.core.errors import InputError
from squeezer.core.pipeline import ModelSource, check_inputs, compress_files, evaluate_file

FUZZ_EXAMPLES = int(os.environ.get("SQUEEZER_FUZZ_EXAMPLES", "10"))
FUZZ_SEED = os.environ.get("SQUEEZER_FUZZ_SEED")
STABLE_CODE = re.compile(r"^[a-z][a-z_]*[a-z]$")
HEIGHT, WIDTH = 6, 10
ONE_STAGE = LwctConfig(sparsity_grid=[0.5], prune_epochs=0, epochs_per_step=0, min_steps_per_stage=2, lr_search=False)
# How an exporter writes an axis it leaves to the data, and a size it fixed.
FREE = ("named", "question mark", "absent", "zero", "minus one", "minus two")


@dataclasses.dataclass(frozen=True)
class Exported:
    """One generated model file's choices."""

    task: str  # classification | segmentation
    channels: int
    classes: int
    opset: int
    batch: str  # one of FREE, or "fixed" (1)
    spatial: str  # one of FREE, or "fixed" (the data's size)
    output_dims: str  # one of FREE, "fixed", or "no shape"
    input_shape_absent: bool
    initializers_as_inputs: bool
    value_info: bool
    cast_chains: bool
    hard_swish: bool
    features_output: bool  # the feature map as a second output (refused: Squeezer takes one output, the logits)
    names: tuple[str, ...]
    doc: str
    metadata: tuple[tuple[str, str], ...]


_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


# Every value of each choice: drawn cases sample from these, and the COVERING cases take each at least once.
CHOICES: dict[str, tuple] = {
    "task": ("classification", "segmentation"),
    "channels": (1, 3),
    "classes": (2, 3, 4),
    "opset": (9, 11, 13, 15, 17, 18, 21),
    "batch": (*FREE, "fixed"),
    "spatial": (*FREE, "fixed"),
    "output_dims": (*FREE, "fixed", "no shape"),
    "input_shape_absent": (False, True),
    "initializers_as_inputs": (False, True),
    "value_info": (False, True),
    "cast_chains": (False, True),
    "hard_swish": (False, True),
}


def _covering_case(index: int) -> Exported:
    """The `index`-th covering case: each choice's value at `index` plus the choice's place (wrapping round), one
    output (so that every value reaches compress; COVERING's last case adds the refused second one), and names, doc
    and metadata as exporters write them (empty, non-ASCII)."""
    picked = {name: values[(index + place) % len(values)] for place, (name, values) in enumerate(CHOICES.items())}
    return Exported(
        **picked,
        features_output=False,
        names=tuple("" if n % 2 else f"wé{n}" for n in range(8)),
        doc="" if index % 2 else "exported ✓",
        metadata=((f"key{index}", "välue"),) if index % 3 else (),
    )


COVERING = [_covering_case(index) for index in range(max(len(values) for values in CHOICES.values()))] + [
    dataclasses.replace(_covering_case(0), features_output=True)
]


@st.composite
def exported_models(draw) -> Exported:
    return Exported(
        **{name: draw(st.sampled_from(values)) for name, values in CHOICES.items()},
        features_output=draw(st.sampled_from([False, False, False, True])),
        names=tuple(draw(st.lists(_text, min_size=8, max_size=8))),
        doc=draw(_text),
        metadata=tuple(draw(st.lists(st.tuples(_text, _text), max_size=3, unique_by=lambda kv: kv[0]))),
    )


def _dims(value, how: str, axes: list[int]) -> None:
    """The sizes of `value`'s `axes` written the way `how` says ("fixed": left at their size)."""
    if how == "no shape":
        value.type.tensor_type.ClearField("shape")
        return
    for axis in axes if how != "fixed" else []:
        dim = value.type.tensor_type.shape.dim[axis]
        dim.Clear()
        if how == "named":
            dim.dim_param = f"{value.name}_axis{axis}"
        elif how == "question mark":
            dim.dim_param = "?"
        elif how != "absent":
            dim.dim_value = {"zero": 0, "minus one": -1, "minus two": -2}[how]


def _build(e: Exported) -> onnx.ModelProto:
    rng = np.random.default_rng(len(e.names))
    names = iter(f"{name}{index}" for index, name in enumerate(e.names))  # unique, whatever the drawn text
    nodes, initializers = [], []

    def weight(array: np.ndarray) -> str:
        name = next(names)
        if not e.cast_chains:
            initializers.append(numpy_helper.from_array(array.astype(np.float32), name))
            return name
        initializers.append(numpy_helper.from_array(array.astype(np.float16), f"{name}.f16"))
        nodes.append(helper.make_node("Cast", [f"{name}.f16"], [f"{name}.cast"], to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Identity", [f"{name}.cast"], [name]))
        return name

    def node(op: str, inputs: list[str], **attributes) -> str:
        output = f"{op}:{len(nodes)}"
        nodes.append(helper.make_node(op, inputs, [output], name=f"{op} {len(nodes)}", doc_string=e.doc, **attributes))
        return output

    width = 4
    h = node(
        "Conv", ["x", weight(rng.standard_normal((width, e.channels, 3, 3))), weight(rng.random(width))], pads=[1] * 4
    )
    h = node("Mul", [h, node("HardSigmoid", [h], alpha=1 / 6, beta=0.5)]) if e.hard_swish else node("Relu", [h])
    features = h
    if e.task == "classification":
        h = node("Flatten", [node("GlobalAveragePool", [h])], axis=1)
        weights = weight(rng.standard_normal((e.classes, width)))
        nodes.append(helper.make_node("Gemm", [h, weights, weight(rng.random(e.classes))], ["y"], transB=1))
        fixed_out, free_out = [1, e.classes], [0]
    else:
        nodes.append(helper.make_node("Conv", [h, weight(rng.standard_normal((e.classes, width, 1, 1)))], ["y"]))
        fixed_out, free_out = [1, e.classes, HEIGHT, WIDTH], [0, 2, 3]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, e.channels, HEIGHT, WIDTH])
    _dims(x, e.batch, [0])
    _dims(x, e.spatial, [2, 3])
    if e.input_shape_absent:
        _dims(x, "no shape", [])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, fixed_out)
    _dims(y, e.output_dims, free_out)
    inputs = [x] + (
        [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in initializers]
        if e.initializers_as_inputs
        else []
    )
    outputs = [y] + ([helper.make_tensor_value_info(features, TensorProto.FLOAT, None)] if e.features_output else [])
    graph = helper.make_graph(nodes, next(names), inputs, outputs, initializers, doc_string=e.doc)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", e.opset)], producer_name=next(names))
    model.doc_string = e.doc
    helper.set_model_props(model, dict(e.metadata))
    model.ir_version = min(model.ir_version, {9: 4, 11: 6, 13: 7, 15: 8, 17: 8, 18: 8, 21: 10}[e.opset])
    if e.value_info:
        try:
            model.graph.value_info.extend(onnx.shape_inference.infer_shapes(model).graph.value_info)
        except Exception:  # a shape the inference cannot follow: the file goes without value_info, as exporters do
            pass
    return model


def _data(e: Exported, path: Path) -> str:
    rng = np.random.default_rng(0)
    x = rng.random((24, e.channels, HEIGHT, WIDTH), dtype=np.float32)
    shape = (24,) if e.task == "classification" else (24, HEIGHT, WIDTH)
    y = np.arange(np.prod(shape)).reshape(shape) % e.classes
    np.savez(path, x_train=x, y_train=y, x_val=x[:12], y_val=y[:12])
    return str(path)


@pytest.fixture(scope="module")
def outcomes():
    """ "works" or "<step>: <code>" → cases: printed at the end (the closing note's count), and a run where nothing
    worked fails, since every generated file is one onnxruntime runs."""
    tally: dict[str, int] = {}
    yield tally
    print(f"fuzz outcomes over {sum(tally.values())} cases: {tally}")
    assert tally.get("works", 0) > 0, tally


def _refusal(outcomes: dict[str, int], step: str, run) -> str | None:
    """Runs `run`: None when it worked, "<step>: <code>: <message>" when it was refused with a stable code; any
    other exception fails the test."""
    try:
        run()
    except InputError as error:
        assert STABLE_CODE.match(error.code) and error.code != "invalid_input", (step, error.code, error.message)
        assert error.message.strip(), (step, error.code)
        outcomes[f"{step}: {error.code}"] = outcomes.get(f"{step}: {error.code}", 0) + 1
        return f"{step}: {error.code}: {error.message}"
    return None


def _fuzz_settings(test):
    configured = settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        derandomize=FUZZ_SEED is None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )(test)
    for case in COVERING:
        configured = example(e=case)(configured)
    return seed(int(FUZZ_SEED))(configured) if FUZZ_SEED is not None else configured


@pytest.mark.slow
@_fuzz_settings
@given(e=exported_models())
def test_exported_models_work_or_are_refused_with_a_stable_code(outcomes, e: Exported):
    with tempfile.TemporaryDirectory(prefix="squeezer-fuzz-") as tmp:
        model, data = Path(tmp) / "model.onnx", _data(e, Path(tmp) / "data.npz")
        onnx.save(_build(e), model)
        config = CompressConfig(
            method="lwct", task=e.task, device="cpu", target=AccuracyTarget(max_drop=100), lwct=ONE_STAGE
        )
        steps = (
            ("intake", lambda: check_inputs(ModelSource(model), data, config)),
            ("evaluate", lambda: evaluate_file(model, data)),
            ("compress", lambda: compress_files(ModelSource(model), data, Path(tmp), config)),
        )
        for step, run in steps:
            refusal = _refusal(outcomes, step, run)
            if refusal is not None:  # only the second output is refused: every other file here is one Squeezer takes
                assert e.features_output and "must have one output" in refusal, (e, refusal)
                return
        assert not e.features_output
        outcomes["works"] = outcomes.get("works", 0) + 1
