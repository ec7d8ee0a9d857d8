"""`squeezer sample`, `compress` and `evaluate` as a user runs them: exit codes, one-line errors, reproducible
figures."""

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from squeezer.cli.main import app
from squeezer.core.intake.registry import build_architecture

runner = CliRunner()
# A run of seconds on two CPU cores: three pruning levels and the five-layer walk, 60 SGD steps each.
QUICK = [
    "--device",
    "cpu",
    "--epochs-per-step",
    "1",
    "--option",
    "lwct.prune_epochs=1",
    "--option",
    "lwct.sparsity_grid=[0.5, 0.7, 0.8]",
    "--option",
    "lwct.min_steps_per_stage=60",
]


@pytest.fixture(scope="module")
def sample_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("sample") / "lenet5-digits"
    result = runner.invoke(app, ["sample", "digits", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "top1" in result.output and (out / "architecture.json").is_file()
    return out


@pytest.mark.slow
def test_compress_meets_a_one_point_budget_and_evaluate_reproduces_it(sample_model, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["compress", str(sample_model), "--data", "sample:digits", "--out", str(out), "--max-drop", "1.0", *QUICK]
    )
    assert result.exit_code == 0, result.output + result.stderr
    assert "target met" in result.output and "compression ×" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["target_met"] and report["target"] == {"max_drop": 1.0, "drop_type": "absolute"}
    for name in ("model.sqz", "model", "model.onnx"):
        evaluated = runner.invoke(app, ["evaluate", str(out / name), "--data", "sample:digits", "--json"])
        assert evaluated.exit_code == 0, evaluated.output + evaluated.stderr
        answer = json.loads(evaluated.stdout)
        assert answer["metric"] == "top1"
        if name == "model.onnx":
            assert abs(answer["accuracy"] - report["compressed"]["accuracy"]) <= 0.1
        else:
            assert answer["accuracy"] == report["compressed"]["accuracy"]


@pytest.mark.slow
def test_a_missed_target_still_writes_the_result_and_exits_3(sample_model, tmp_path):
    # Pruning 99 % of the weights without fine-tuning cannot stay within a zero-point budget.
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "compress",
            str(sample_model),
            "--data",
            "sample:digits",
            "--out",
            str(out),
            "--max-drop",
            "0",
            "--device",
            "cpu",
            "--epochs-per-step",
            "0",
            "--option",
            "lwct.sparsity=0.99",
            "--option",
            "lwct.prune_epochs=0",
        ],
    )
    assert result.exit_code == 3, result.output + result.stderr
    assert "target missed" in result.output
    assert not json.loads((out / "report.json").read_text())["target_met"]
    assert (out / "model.sqz").is_file()


def _rgb_npz(path):
    x = np.zeros((20, 3, 8, 8), dtype=np.float32)
    y = np.arange(20) % 10
    np.savez(path, x_train=x, y_train=y, x_val=x, y_val=y)
    return path


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("pickle", "unsafe_model_format"),
        ("rgb-data", "model_data_mismatch"),
        ("unknown-sample", "invalid_dataset"),
        ("bad-option", "invalid_options"),
        ("metric-of-another-task", "invalid_options"),
    ],
)
def test_bad_input_exits_2_with_one_line_on_stderr(sample_model, tmp_path, case, code):
    model, extra = str(sample_model), []
    data = "sample:digits"
    if case == "pickle":
        torch.save(build_architecture("lenet5", {"input_size": 8}), tmp_path / "model.pt")
        model, extra = str(tmp_path / "model.pt"), ["--arch", "lenet5", "--arch-arg", "input_size=8"]
    elif case == "rgb-data":
        data = str(_rgb_npz(tmp_path / "rgb.npz"))
    elif case == "unknown-sample":
        data = "sample:no-such-thing"
    elif case == "metric-of-another-task":
        extra = ["--metric", "miou"]
    else:
        extra = ["--option", "lwct.sparsity=2"]
    result = runner.invoke(app, ["compress", model, "--data", data, "--out", str(tmp_path / "out"), *extra])
    assert result.exit_code == 2, result.output + result.stderr
    assert result.stderr.startswith(f"error: {code}: ") and result.stderr.strip().count("\n") == 0
    assert "Traceback" not in result.output


def test_evaluate_of_a_bad_file_exits_2(tmp_path):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"not onnx")
    result = runner.invoke(app, ["evaluate", str(model), "--data", "sample:digits", "--json"])
    assert result.exit_code == 2 and result.stderr.startswith("error: invalid_model: ")


@pytest.mark.slow
def test_auto_runs_both_stages_from_the_command_line(sample_model, tmp_path):
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "compress",
            str(sample_model),
            "--data",
            "sample:digits",
            "--out",
            str(out),
            "--method",
            "auto",
            "--task",
            "classification",
            "--metric",
            "top1",
            *QUICK,
            "--option",
            "filter.levels=[0.3]",
            "--option",
            'filter.init=["l1"]',
            "--option",
            "filter.min_steps_per_stage=60",
        ],
    )
    assert result.exit_code == 0, result.output + result.stderr
    assert "filter: prune" in result.stderr and "lwct: ternary" in result.stderr
    assert "CPU latency, batch 32" in result.output and "onnxruntime, batch 32" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "auto" and {t["stage"].split(":")[0] for t in report["trials"]} == {
        "filter",
        "lwct",
        "lwct-alone",
        "int8",
    }


def _paddle2onnx_classifier(path):
    """A classifier whose input is `x: [-1, 3, ?, ?]` (the batch a dim_value of -1, height and width unnamed), as an
    older paddle2onnx wrote it (issue 27)."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("GlobalAveragePool", ["c"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1),
        ],
        "cls",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, None, None])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [-1, 2])],
        [
            numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"),
            numpy_helper.from_array(rng.standard_normal((2, 4)).astype(np.float32), "fc"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), path)
    return path


@pytest.mark.slow
def test_a_free_axis_written_as_minus_one_compresses_without_a_traceback(tmp_path):
    model = _paddle2onnx_classifier(tmp_path / "cls.onnx")
    x = np.random.default_rng(1).random((24, 3, 8, 16), dtype=np.float32)
    y = np.arange(24) % 2
    np.savez(tmp_path / "lines.npz", x_train=x, y_train=y, x_val=x, y_val=y)
    data = ["--data", str(tmp_path / "lines.npz")]
    evaluated = runner.invoke(app, ["evaluate", str(model), *data, "--json"])
    assert evaluated.exit_code == 0, evaluated.output + evaluated.stderr
    args = ["compress", str(model), *data, "--out", str(tmp_path / "out"), "--max-drop", "100", *QUICK]
    result = runner.invoke(app, [*args, "--option", "lwct.sparsity_grid=[0.5]"])
    assert result.exit_code == 0, result.output + result.stderr
    assert "Traceback" not in result.output + result.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["baseline"]["accuracy"] == json.loads(evaluated.stdout)["accuracy"]


def test_an_internal_error_is_one_line_naming_its_traceback_log(sample_model, tmp_path):
    occupied = tmp_path / "a-file"
    occupied.write_text("not a folder")  # `sample --out` must create a folder here: an error no check foresees
    result = runner.invoke(app, ["sample", "digits", "--out", str(occupied)])
    assert result.exit_code == 1, result.output + result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: internal_error: FileExistsError: ") and "\n" not in line
    log = Path(re.search(r"the traceback is in (\S+?),", line).group(1))
    assert "Traceback" in log.read_text() and "Traceback" not in result.output + result.stderr
    log.unlink()
    debugged = runner.invoke(app, ["--debug", "sample", "digits", "--out", str(occupied)])
    assert debugged.exit_code == 1 and "Traceback" in debugged.stderr
    assert debugged.stderr.strip().splitlines()[-1].startswith("error: internal_error: FileExistsError: ")
