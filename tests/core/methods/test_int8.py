"""method=int8: weights and activations int8 QDQ, calibrated on the training data, judged in onnxruntime."""

import onnx
import pytest

from squeezer.core.config import AccuracyTarget, CompressConfig, Int8Config
from squeezer.core.intake.models import save_model_dir
from squeezer.core.measure import top1_accuracy
from squeezer.core.methods.int8 import compress_int8
from squeezer.core.pipeline import ModelSource, compress_files, evaluate_file

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
