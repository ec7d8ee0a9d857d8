import io
import time

import onnx
import pytest
import torch
from torch import nn

from squeezer.core.errors import InputError
from squeezer.core.events import Guard
from squeezer.core.measure.compare import (
    MIN_EFFECT,
    MIN_ROUNDS,
    check_runtime,
    compare_modules,
    compare_onnx,
    median_interval,
    verdict_of,
)
from tests.core.measure.networks import SHAPE
from tests.core.measure.networks import conv_network as _network


def _onnx(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.onnx.export(
        module, torch.zeros(1, *SHAPE), buffer, input_names=["x"], dynamic_axes={"x": {0: "n"}}, dynamo=False
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def wide_and_narrow() -> tuple[bytes, bytes]:
    return _onnx(_network(64)), _onnx(_network(8))


def test_byte_identical_files_compare_as_no_difference(tmp_path, wide_and_narrow):
    wide, _ = wide_and_narrow
    (tmp_path / "a.onnx").write_bytes(wide)
    (tmp_path / "b.onnx").write_bytes(wide)
    comparison = compare_onnx(tmp_path / "a.onnx", tmp_path / "b.onnx", SHAPE, budget_s=0.5)
    assert comparison.identical and comparison.verdict == "no difference" and comparison.speedup == 1.0
    assert comparison.baseline_ms > 0 and comparison.candidate_ms > 0 and comparison.rounds >= MIN_ROUNDS
    report = comparison.as_dict()
    assert report["speedup"] == 1.0 and report["confidence"] == 0.95 and report["low"] <= report["high"]


def test_the_same_graph_in_two_files_is_not_claimed_faster(wide_and_narrow):
    wide, _ = wide_and_narrow
    proto = onnx.load_from_string(wide)
    proto.doc_string = "the same graph, other bytes"
    comparison = compare_onnx(wide, proto.SerializeToString(), SHAPE, budget_s=1.0)
    assert not comparison.identical
    assert comparison.verdict == "no difference" and comparison.speedup == 1.0, comparison


def test_a_model_with_eight_times_fewer_channels_is_reported_faster(wide_and_narrow):
    wide, narrow = wide_and_narrow
    comparison = compare_onnx(wide, narrow, SHAPE, batch=4, budget_s=1.0)
    assert comparison.verdict == "faster" and comparison.speedup > 1 + MIN_EFFECT
    assert comparison.speedup == comparison.ratio and comparison.candidate_ms < comparison.baseline_ms
    backwards = compare_onnx(narrow, wide, SHAPE, batch=4, budget_s=1.0)
    assert backwards.verdict == "slower" and backwards.speedup < 1


def test_torch_modules_compare_the_same_way():
    threads = torch.get_num_threads()
    comparison = compare_modules(_network(64), _network(8), SHAPE, batch=4, budget_s=1.0)
    assert comparison.verdict == "faster" and torch.get_num_threads() == threads


def test_median_interval_is_the_sign_tests_order_statistics():
    values = [float(v) for v in range(20)]
    assert median_interval(values) == (5.0, 14.0)  # P(Binomial(20, 1/2) ≤ 5) = 0.021 ≤ 0.025 < P(≤ 6)
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)  # too few values for 95 %: their range


@pytest.mark.parametrize(
    "low, high, verdict",
    [(1.2, 1.5, "faster"), (0.5, 0.9, "slower"), (0.97, 1.03, "no difference"), (0.9, 1.2, None), (1.01, 1.3, None)],
)
def test_a_difference_is_claimed_only_beyond_the_noise(low, high, verdict):
    assert verdict_of(low, high) == verdict


def test_past_the_deadline_rounds_end_at_the_minimum_and_at_once_late_in_the_grace(wide_and_narrow):
    wide, narrow = wide_and_narrow
    late = Guard(time_limit_s=1e-9).essential()  # its deadline has passed: measurements cut short
    assert compare_onnx(wide, narrow, SHAPE, guard=late).rounds == MIN_ROUNDS
    later = Guard(grace_s=10).essential()
    later.deadline, later.hard_deadline = time.monotonic() - 6, time.monotonic() + 4  # over half the grace spent
    comparison = compare_onnx(wide, narrow, SHAPE, guard=later)
    assert comparison.rounds == 1 and comparison.verdict == "no difference" and comparison.speedup == 1.0


def test_an_unknown_or_absent_runtime_is_refused():
    with pytest.raises(InputError) as unknown:
        check_runtime("tensorflow")
    assert unknown.value.code == "invalid_options"
    if not torch.cuda.is_available():
        with pytest.raises(InputError) as absent:
            check_runtime("onnxruntime-cuda")
        assert absent.value.code == "runtime_unavailable" and "onnxruntime-cpu" in absent.value.message
