"""method=int8: weights and activations int8 QDQ, calibrated on the training data, judged in onnxruntime."""

from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper
import pytest
import torch
from torch import nn

from squeezer.core.config import AccuracyTarget, CompressConfig, Int8Config, SpeedTarget
from squeezer.core.intake.models import load_model, save_model_dir
from squeezer.core.measure import top1_accuracy
from squeezer.core.measure.compare import SpeedComparison
from squeezer.core.methods.int8 import compress_int8, layer_reasons
from squeezer.core.pipeline import ModelSource, compress_files, evaluate_file
from squeezer.core.quantize import Int8Model, quantize_int8
from squeezer.core.quantize_layers import LayerSpeed, exclusion_choices
from squeezer.core.train import fit
from tests.core.methods.networks import wide_digits_cnn

pytestmark = pytest.mark.slow  # trains models: in the full suite, not the fast tier


def test_int8_result_is_the_qdq_file_its_accuracy_was_measured_on(digits_model, digits):
    config = CompressConfig(method="int8", device="cpu", int8=Int8Config(calibration_samples=64))
    result = compress_int8(digits_model, digits, config)
    baseline = top1_accuracy(digits_model.module, digits.x_val, digits.y_val)
    (trial,) = result.trials
    assert trial.accepted == (baseline - trial.accuracy <= 1.0) == (result.onnx is not None) == result.target_met
    ops = {node.op_type for node in onnx.load_from_string(result.onnx).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert {layer.representation for layer in result.layers} == {"int8"}


def test_int8_report_matches_model_onnx_in_onnxruntime(digits_model, tmp_path):
    save_model_dir(digits_model, tmp_path / "model")
    config = CompressConfig(method="int8", device="cpu", target=AccuracyTarget(max_drop=1.0))
    report = compress_files(ModelSource(tmp_path / "model"), "sample:digits", tmp_path / "out", config)
    assert report["deployable"] == "model.onnx" and report["target_met"]
    onnx_accuracy = evaluate_file(tmp_path / "out" / "model.onnx", "sample:digits")["accuracy"]
    assert onnx_accuracy == report["compressed"]["accuracy"] == report["artifacts"]["model.onnx"]["accuracy"]
    assert report["compressed"]["size_bytes"] == (tmp_path / "out" / "model.onnx").stat().st_size
    assert report["compressed"]["size_bytes"] < report["baseline_onnx"]["bytes"] / 2  # int8 weights, not float32
    assert report["trials"][0]["accuracy"] == pytest.approx(onnx_accuracy, abs=0.1)


def _wide_digits_onnx(digits, path: Path) -> Path:
    """The wide digits CNN trained briefly and exported by torch.onnx, as a user would."""
    torch.manual_seed(0)
    module = wide_digits_cnn()
    fit(module, digits.x_train, digits.y_train, epochs=3, lr=0.02, seed=0)
    torch.onnx.export(module.eval(), (torch.zeros(1, 1, 8, 8),), str(path), dynamo=False)
    return path


def _int8_weighted(model: onnx.ModelProto) -> set[str]:
    """The convolutions and matrix products whose weight input comes out of a DequantizeLinear."""
    dequantized = {node.output[0] for node in model.graph.node if node.op_type == "DequantizeLinear"}
    return {node.name for node in model.graph.node if node.op_type in ("Conv", "Gemm") and node.input[1] in dequantized}


def test_per_layer_int8_quantizes_exactly_the_layers_of_the_fastest_choice(digits, tmp_path):
    model = load_model(_wide_digits_onnx(digits, tmp_path / "wide.onnx"))
    quantized = quantize_int8(model, digits, Int8Config(), "top1", faster_on=SpeedTarget())
    assert len(quantized.layer_speeds) == 4  # three convolutions and the fully connected layer, each measured
    every = {layer.node for layer in quantized.layer_speeds}
    assert quantized.choices and "all" in quantized.choices  # every layer int8 is always one of the choices timed
    if quantized.chosen == "float":  # no choice ran faster than the float model: it is handed back unchanged
        assert set(quantized.float_layers) == every and not _int8_weighted(onnx.load_from_string(quantized.onnx))
        assert max(quantized.choices.values()) <= 1.0
        return
    assert quantized.choices[quantized.chosen] == max(quantized.choices.values()) > 1.0
    assert _int8_weighted(onnx.load_from_string(quantized.onnx)) == every - set(quantized.float_layers)


def _graph(nodes: list[tuple[str, str, list[str], str]]) -> onnx.ModelProto:
    """A graph of (name, op, inputs, output) nodes from "x" to "y"; "w" is the one weight every layer reads."""
    weight = onnx.numpy_helper.from_array(np.ones((1, 1, 1, 1), np.float32), "w")
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node(op, inputs, [output], name=name) for name, op, inputs, output in nodes],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, None)],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [weight],
    )
    return onnx.helper.make_model(graph)


def _speeds(verdicts: dict[str, str]) -> list[LayerSpeed]:
    ratios = {"faster": 1.6, "slower": 0.5, "no difference": 1.0}
    return [
        LayerSpeed(node, "Conv", SpeedComparison(1, 1, ratios[v], ratios[v], ratios[v], v, 8, (1, 1), 0.1))
        for node, v in verdicts.items()
    ]


def test_the_choices_timed_are_all_int8_the_ends_float_and_only_the_faster_layers_int8():
    graph = _graph(
        [
            ("first", "Conv", ["x", "w"], "a"),
            ("act", "Relu", ["a"], "b"),
            ("middle", "Conv", ["b", "w"], "c"),
            ("late", "Conv", ["c", "w"], "d"),
            ("flat", "Flatten", ["d"], "e"),
            ("head", "Gemm", ["e", "w"], "y"),
        ]
    )
    speeds = _speeds({"first": "slower", "middle": "no difference", "late": "faster", "head": "slower"})
    assert exclusion_choices(graph, speeds) == {
        "all": [],
        "ends": ["first", "head"],
        "faster": ["first", "middle", "head"],
    }
    only_ends = _speeds({"first": "slower", "middle": "faster", "late": "faster", "head": "faster"})
    assert exclusion_choices(graph, only_ends) == {"all": [], "ends": ["first"]}  # "faster" is the same choice
    none_faster = _speeds(dict.fromkeys(["first", "middle", "late", "head"], "slower"))
    assert exclusion_choices(graph, none_faster) == {"all": [], "ends": ["first", "head"]}  # all float: not int8


def test_per_layer_int8_report_matches_model_onnx_in_onnxruntime(digits, tmp_path):
    source = ModelSource(_wide_digits_onnx(digits, tmp_path / "wide.onnx"))
    speed = SpeedTarget(speedup=1.5)  # a speed goal: the latency objective, so int8 keeps only faster layers
    config = CompressConfig(method="int8", device="cpu", speed_target=speed, target=AccuracyTarget(max_drop=5.0))
    report = compress_files(source, "sample:digits", tmp_path / "out", config)
    kinds = [layer["representation"] for layer in report["layers"]]
    if "int8" not in kinds:  # int8 ran no layer faster here: nothing was quantized, and each row says why
        assert report["compressed"]["accuracy"] == report["baseline"]["accuracy"]
        assert all(layer["reason"].startswith("kept float: ") for layer in report["layers"])
        return
    onnx_accuracy = evaluate_file(tmp_path / "out" / "model.onnx", "sample:digits")["accuracy"]
    assert report["compressed"]["accuracy"] == pytest.approx(onnx_accuracy, abs=0.1)
    assert len(_int8_weighted(onnx.load(str(tmp_path / "out" / "model.onnx")))) == kinds.count("int8")


def test_layer_reasons_follow_the_choice_and_the_measured_verdicts():
    module = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    speeds = _speeds({"/0/Conv": "slower", "/3/Gemm": "faster"})
    mixed = Int8Model(b"", 90.0, speeds, ["/0/Conv"], {"all": 1.2, "ends": 1.4}, "ends")
    reasons = layer_reasons(module, mixed, within_budget=True)
    assert reasons == {"3": None, "0": "kept float: int8 ran it 0.50× as fast (slower) on its own"}
    unchanged = Int8Model(b"", 90.0, speeds, ["/0/Conv", "/3/Gemm"], {"all": 0.8, "ends": 1.0}, "float")
    assert set(layer_reasons(module, unchanged, within_budget=True).values()) == {
        "kept float: no choice of int8 layers ran the whole model faster (best 1.00×)"
    }
    assert set(layer_reasons(module, mixed, within_budget=False).values()) == {
        "kept float: the int8 model fell outside the budget"
    }
