"""auto under a latency objective: the plan it runs and the choice among measured candidates (core.methods.auto)."""

from torch import nn

from squeezer.core.config import CompressConfig, Int8Layers, LatencyPruning, SpeedTarget
from squeezer.core.measure.compare import SpeedComparison
from squeezer.core.methods.auto import _fastest, _for_speed, _Outcome, _plan, _untouched_rows


def _outcome(stage: str, verdict: str, ratio: float, low: float, high: float, packed: int, ms=1.0) -> _Outcome:
    speed = SpeedComparison(ms * ratio, ms, ratio, low, high, verdict, 8, (1, 1), 0.1)  # type: ignore[arg-type]
    return _Outcome(stage, None, [], packed, speed)  # type: ignore[arg-type]  # the choice reads no result


def test_a_candidate_slower_than_the_baseline_is_never_chosen():
    slower = _outcome("int8", "slower", 0.4, 0.35, 0.45, 100)
    assert _fastest([slower], SpeedTarget()) is None  # auto then returns the original model
    same = _outcome("lwct", "no difference", 1.02, 0.98, 1.06, 900)
    assert _fastest([slower, same], SpeedTarget()) is same


def test_speed_ups_that_cannot_be_told_apart_go_to_the_smallest_and_the_goal_comes_first():
    fast = _outcome("filter", "faster", 2.2, 1.9, 2.5, 5000)
    close = _outcome("lwct", "faster", 2.0, 1.8, 2.3, 800)  # its interval overlaps the best's
    far = _outcome("int8", "faster", 1.3, 1.2, 1.4, 300, ms=2.0)
    same = _outcome("lwct-alone", "no difference", 1.03, 0.97, 1.08, 200)
    assert _fastest([fast, close, far, same], SpeedTarget()) is close
    assert _fastest([fast, far, same], SpeedTarget()) is fast
    assert _fastest([same, far], SpeedTarget()) is far
    assert _fastest([same, far], SpeedTarget(latency_ms=1.5)) is same  # only same runs within 1.5 ms
    assert _fastest([fast, close], SpeedTarget(speedup=2.1)) is fast  # only fast reaches 2.1×


def test_a_speed_goal_makes_latency_auto_s_objective():
    assert CompressConfig(method="auto").objective == "size"
    assert CompressConfig(method="auto", speed_target=SpeedTarget(speedup=2.0)).objective == "latency"


def test_the_original_model_s_rows_are_float_and_whole():
    rows = _untouched_rows(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4, 2)))
    assert [(r.name, r.representation, r.sparsity, r.accepted) for r in rows] == [
        ("0", "float", 0.0, False),
        ("2", "float", 0.0, False),
    ]


def test_under_a_latency_objective_the_plan_is_built_for_speed():
    for_size = CompressConfig(method="auto")
    assert [stage.label for stage in _plan(for_size, 1.0)] == ["filter", "lwct", "lwct-alone", "int8"]
    assert _for_speed(for_size, _plan(for_size, 1.0)[0]) == {}
    for_speed = CompressConfig(method="auto", speed_target=SpeedTarget(speedup=2.0))
    plan = _plan(for_speed, 1.0)
    assert [stage.label for stage in plan] == ["filter", "int8"]  # lwct buys size, not speed
    assert _for_speed(for_speed, plan[0])["filter"].latency == LatencyPruning()
    assert _for_speed(for_speed, plan[1]) == {}
    assert for_speed.int8_layers == Int8Layers.FASTER and for_size.int8_layers == Int8Layers.ALL
    own = LatencyPruning(speedups=[4.0])
    chosen = CompressConfig(method="auto", auto={"objective": "latency"}, filter={"latency": own})
    assert _for_speed(chosen, _plan(chosen, 1.0)[0]) == {}  # the job's own latency options stand
