"""The report's speed figures: each latency is one side of an A/B comparison, and the goal is judged on it."""

import io

import pytest
import torch
from torch import nn

from squeezer.core.config import SpeedTarget
from squeezer.core.events import Guard
from squeezer.core.measure.compare import SpeedComparison
from squeezer.core.measure.speed_report import REPORT_BATCHES, comparison_budget, goal_met, measure_speed
from tests.core.measure.networks import SHAPE
from tests.core.measure.networks import conv_network as _network


def _onnx(module: nn.Module, path):
    buffer = io.BytesIO()
    torch.onnx.export(
        module, torch.zeros(1, *SHAPE), buffer, input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False
    )
    path.write_bytes(buffer.getvalue())
    return path


@pytest.fixture(scope="module")
def findings(tmp_path_factory):
    folder = tmp_path_factory.mktemp("speed")
    wide, narrow = _network(64), _network(8)
    files = {"model.sqz": narrow, "model/": narrow, "model.onnx": _onnx(narrow, folder / "model.onnx")}
    target = SpeedTarget(speedup=2.0, batch=4)  # not one of the report's batches: measured once more
    return measure_speed(wide, _onnx(wide, folder / "baseline.onnx"), files, SHAPE, target, Guard(), budget_s=0.5)


def test_every_reported_latency_is_a_side_of_a_comparison(findings):
    section = findings.section
    for name in ("model.sqz", "model/", "model.onnx"):
        speed = section["artifacts"][name]
        for key, batch in REPORT_BATCHES.items():
            assert findings.latencies[name][key] == speed[f"batch{batch}"]["candidate_ms"]
            assert speed[f"batch{batch}"]["verdict"] == "faster"  # eight times fewer channels
    assert findings.latencies["baseline"]["latency_ms"] == section["artifacts"]["model.sqz"]["batch1"]["baseline_ms"]
    assert (
        findings.latencies["baseline.onnx"]["latency_ms_batch32"]
        == (section["artifacts"]["model.onnx"]["batch32"]["baseline_ms"])
    )
    assert section["artifacts"]["model.sqz"]["runtime"] == "torch"
    assert section["artifacts"]["model.onnx"]["runtime"] == "onnxruntime-cpu"


def test_the_goal_is_judged_on_model_onnx_on_the_target(findings):
    section = findings.section
    on_target = section["on_target"]
    assert section["target"] == {
        "speedup": 2.0,
        "latency_ms": None,
        "runtime": "onnxruntime-cpu",
        "threads": 1,
        "batch": 4,
    }
    assert on_target["verdict"] == "faster" and section["goal_met"] == (on_target["speedup"] >= 2.0)
    assert section["artifacts"]["model.onnx"]["speedup_on_target"] == on_target["speedup"]
    assert section["artifacts"]["model.sqz"]["goal_met"] is None  # batch 4 is none of the report's batches
    assert section["seconds"] > 0


def _comparison(verdict: str, ratio: float, candidate_ms: float) -> SpeedComparison:
    return SpeedComparison(
        baseline_ms=candidate_ms * ratio,
        candidate_ms=candidate_ms,
        ratio=ratio,
        low=ratio,
        high=ratio,
        verdict=verdict,  # type: ignore[arg-type]
        rounds=8,
        runs_per_round=(1, 1),
        seconds=0.1,
    )


def test_a_goal_is_met_only_by_a_difference_beyond_the_noise():
    assert goal_met(SpeedTarget(speedup=2.0), _comparison("faster", 2.5, 1.0))
    assert not goal_met(SpeedTarget(speedup=1.03), _comparison("no difference", 1.04, 1.0))  # speed-up 1.0
    assert goal_met(SpeedTarget(latency_ms=1.5), _comparison("no difference", 1.0, 1.2))
    assert not goal_met(SpeedTarget(latency_ms=1.0), _comparison("faster", 2.0, 1.2))
    assert goal_met(SpeedTarget(), _comparison("faster", 2.0, 1.0)) is None


def test_the_budget_is_a_share_of_the_methods_time_within_bounds():
    assert comparison_budget(0.0) == 0.25 and comparison_budget(100.0) == 1.0 and comparison_budget(1e6) == 2.0
