"""core.pipeline on the digits sample: the files it writes, the figures they reproduce, the inputs it refuses."""

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from squeezer.core.artifacts.report import SCHEMA_VERSION, Report
from squeezer.core.artifacts.sqz import load_sqz
from squeezer.core.config import AccuracyTarget, CompressConfig, LwctConfig, Normalization
from squeezer.core.errors import DatasetError, MismatchError, ModelFormatError, UnsafeFormatError
from squeezer.core.intake.registry import build_architecture
from squeezer.core.pipeline import PREPROCESSING_KEY, ModelSource, check_inputs, compress_files, evaluate_file
from squeezer.core.samples import ensure_sample_model

pytestmark = pytest.mark.slow  # trains models: in the full suite, not the fast tier


REPORT_KEYS = {
    "method",
    "metric",
    "target",
    "target_met",
    "baseline",
    "compressed",
    "accuracy_drop",
    "compression_ratio",
    "macs_reduction",
    "flops_reduction",
    "layers",
    "trials",
    "task",
    "dataset",
    "device",
    "duration_s",
    "seed",
    "preprocessing",
    "squeezer_version",
    "onnx_accuracy",
}
MEASURES = {"accuracy", "params", "nonzero_params", "macs", "flops", "size_bytes", "latency_ms", "latency_ms_batch32"}
# Seconds on two CPU cores: three pruning levels and the five-layer walk, 60 SGD steps each.
QUICK = LwctConfig(sparsity_grid=[0.5, 0.7, 0.8], prune_epochs=1, epochs_per_step=1, min_steps_per_stage=60)
# No training at all: every step is evaluated as it is (for tests of plumbing, not of quality).
UNTRAINED = LwctConfig(sparsity=0.5, prune_epochs=0, epochs_per_step=0)


@pytest.fixture(scope="module")
def sample_dir():
    return ensure_sample_model("digits")[0]


@pytest.fixture(scope="module")
def compressed(sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    events = []
    config = CompressConfig(device="cpu", lwct=QUICK, target=AccuracyTarget(max_drop=1.0))
    report = compress_files(ModelSource(sample_dir), "sample:digits", out, config, on_event=events.append)
    return out, report, events


def test_compress_writes_every_result_and_a_complete_report(compressed):
    out, report, events = compressed
    assert {p.name for p in out.iterdir()} == {"model.sqz", "model", "model.onnx", "report.json", "report.html"}
    assert json.loads((out / "report.json").read_text()) == report
    assert REPORT_KEYS <= set(report)
    assert set(report["baseline"]) == set(report["compressed"]) == MEASURES
    assert report["target_met"] and report["accuracy_drop"] <= 1.0
    assert report["compressed"]["size_bytes"] == (out / "model.sqz").stat().st_size
    assert report["compression_ratio"] > 2  # at least the pruning step fits a 1-point budget
    assert report["compressed"]["nonzero_params"] < report["baseline"]["nonzero_params"]
    assert len(report["layers"]) == 5 and report["trials"]
    assert all(layer["channels_removed"] == 0 and layer["reason"] for layer in report["layers"])  # lwct keeps channels
    assert report["dataset"]["name"] == "sample:digits" and report["device"] == "cpu"
    fractions = [event.fraction for event in events]
    assert fractions == sorted(fractions) and events[-1].stage == "done" and fractions[-1] == 1.0


def test_report_json_is_a_report_of_the_current_schema(compressed):
    """What the API serves (the typed Report) is report.json itself, key for key and figure for figure."""
    out, report, _ = compressed
    assert report["schema_version"] == SCHEMA_VERSION
    assert Report.model_validate_json((out / "report.json").read_text()).as_dict() == report


def test_every_written_model_reproduces_the_reported_accuracy(compressed):
    out, report, _ = compressed
    accuracy = report["compressed"]["accuracy"]
    assert evaluate_file(out / "model.sqz", "sample:digits") == {"metric": "top1", "accuracy": accuracy}
    assert evaluate_file(out / "model", "sample:digits")["accuracy"] == accuracy
    onnx_accuracy = evaluate_file(out / "model.onnx", "sample:digits")["accuracy"]
    assert onnx_accuracy == report["onnx_accuracy"] and abs(onnx_accuracy - accuracy) <= 0.1


def test_model_onnx_is_as_small_as_the_method_made_it_and_scores_as_reported(compressed):
    out, report, _ = compressed
    artifacts, baseline_onnx = report["artifacts"], report["baseline_onnx"]
    assert set(artifacts) == {"model.sqz", "model/", "model.onnx"}
    for name, entry in artifacts.items():
        path = out / name.rstrip("/")
        size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        assert entry["bytes"] == size and entry["latency_ms"] > 0 and entry["latency_ms_batch32"] > 0
    assert artifacts["model.sqz"]["accuracy"] == artifacts["model/"]["accuracy"] == report["compressed"]["accuracy"]
    assert artifacts["model.onnx"]["bytes"] * 4 <= baseline_onnx["bytes"]  # ternary int4 + float16 initializers
    assert abs(artifacts["model.onnx"]["accuracy"] - report["compressed"]["accuracy"]) <= 0.1
    assert baseline_onnx["accuracy"] == pytest.approx(report["baseline"]["accuracy"], abs=0.1)
    x = torch.randn(16, 1, 8, 8)
    (onnx_logits,) = ort.InferenceSession(str(out / "model.onnx")).run(None, {"input": x.numpy()})
    np.testing.assert_allclose(onnx_logits, load_sqz(out / "model.sqz").module.eval()(x).detach().numpy(), atol=1e-4)


def test_every_latency_is_a_side_of_an_ab_comparison_and_the_fixed_cost_is_stated(compressed):
    _, report, _ = compressed
    speed = report["speed"]
    onnx = speed["artifacts"]["model.onnx"]
    assert report["artifacts"]["model.onnx"]["latency_ms"] == onnx["batch1"]["candidate_ms"]
    assert report["baseline_onnx"]["latency_ms_batch32"] == onnx["batch32"]["baseline_ms"]
    sqz = speed["artifacts"]["model.sqz"]
    assert report["baseline"]["latency_ms"] == sqz["batch1"]["baseline_ms"]
    assert report["compressed"]["latency_ms_batch32"] == sqz["batch32"]["candidate_ms"]
    for comparison in (onnx["batch1"], onnx["batch32"], sqz["batch1"], sqz["batch32"]):
        assert comparison["verdict"] in ("faster", "slower", "no difference")
        assert comparison["speedup"] == (1.0 if comparison["verdict"] == "no difference" else comparison["ratio"])
    assert speed["on_target"] == onnx["batch1"] and speed["goal_met"] is None  # the default target, no goal
    timings = report["timings_s"]
    assert set(timings) == {"load", "method", "write_and_verify", "measure_speed"}
    assert sum(timings.values()) <= report["duration_s"] + 1e-6 and timings["measure_speed"] == speed["seconds"]


def test_normalization_is_saved_with_the_model_and_applied_by_every_reader(sample_dir, tmp_path):
    normalization = Normalization(mean=[0.25], std=[0.5])
    config = CompressConfig(
        device="cpu", lwct=UNTRAINED, target=AccuracyTarget(max_drop=100), normalization=normalization
    )
    report = compress_files(ModelSource(sample_dir), "sample:digits", tmp_path / "a", config)
    assert report["preprocessing"] == normalization.model_dump()
    saved = json.loads((tmp_path / "a" / "model" / "architecture.json").read_text())
    assert saved["preprocessing"] == normalization.model_dump()
    onnx_meta = ort.InferenceSession(str(tmp_path / "a" / "model.onnx")).get_modelmeta().custom_metadata_map
    assert json.loads(onnx_meta[PREPROCESSING_KEY]) == normalization.model_dump()
    for name in ("model.sqz", "model"):
        assert evaluate_file(tmp_path / "a" / name, "sample:digits")["accuracy"] == report["compressed"]["accuracy"]
    assert evaluate_file(tmp_path / "a" / "model.onnx", "sample:digits")["accuracy"] == report["onnx_accuracy"]
    # Without a normalization of its own, a run uses the model's: its baseline is the previous result.
    again = compress_files(
        ModelSource(tmp_path / "a" / "model"),
        "sample:digits",
        tmp_path / "b",
        config.model_copy(update={"normalization": None}),
    )
    assert again["preprocessing"] == normalization.model_dump()
    assert again["baseline"]["accuracy"] == report["compressed"]["accuracy"]


def test_check_inputs_summarises_what_a_job_would_compress(sample_dir):
    summary = check_inputs(ModelSource(sample_dir), "sample:digits", CompressConfig())
    assert (summary.model_format, summary.architecture, summary.input_shape, summary.num_classes) == (
        "squeezer",
        "lenet5",
        (1, 8, 8),
        10,
    )
    assert (summary.train_samples, summary.val_samples) == (1437, 360)
    assert summary.layers == ["features.0", "features.3", "classifier.1", "classifier.3", "classifier.5"]


def _rgb_npz(path):
    x = np.zeros((20, 3, 8, 8), dtype=np.float32)
    y = np.arange(20) % 10
    np.savez(path, x_train=x, y_train=y, x_val=x, y_val=y)
    return path


@pytest.mark.parametrize("case", ["pickle", "missing", "rgb-data", "unknown-sample"])
def test_unusable_inputs_raise_their_input_error(sample_dir, tmp_path, case):
    model, data, error = ModelSource(sample_dir), "sample:digits", None
    if case == "pickle":
        torch.save(build_architecture("lenet5", {"input_size": 8}), tmp_path / "model.pt")
        model, error = ModelSource(tmp_path / "model.pt", architecture="lenet5"), UnsafeFormatError
    elif case == "missing":
        model, error = ModelSource(tmp_path / "nothing.sqz"), ModelFormatError
    elif case == "rgb-data":
        data, error = _rgb_npz(tmp_path / "rgb.npz"), MismatchError
    else:
        data, error = "sample:no-such-thing", DatasetError
    with pytest.raises(error):
        check_inputs(model, data, CompressConfig())


def test_the_sample_model_is_trained_once_then_reused(tmp_path):
    model_dir, accuracy = ensure_sample_model("digits", cache_dir=tmp_path)
    stamp = (model_dir / "model.safetensors").stat().st_mtime_ns
    assert accuracy > 95
    assert ensure_sample_model("digits", cache_dir=tmp_path) == (model_dir, accuracy)
    assert (model_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "samples").iterdir()] == ["digits-v1"]  # no staging folder left behind
