"""The latency table and the channel choice made from it (issue 28, item 2): the table is measured in onnxruntime on
the grid of counts the runtime runs fastest and read back from its cache unchanged; given a fixed table, the greedy
choice is deterministic, meets its target when it can, keeps every group at an allowed count, and the model it
describes shrinks to a valid network; a group's measured sensitivity steers the choice."""

import copy
import json

import pytest
import torch
from torch import nn

from squeezer.core.errors import InputError
from squeezer.core.graph import shrink, trace
from squeezer.core.intake.registry import build_architecture
from squeezer.core.methods import latency_table as tables
from squeezer.core.methods.latency_choice import choose_channels, group_norm_scores
from squeezer.core.methods.latency_table import (
    LatencyTable,
    LayerLatency,
    Runtime,
    allowed_counts,
    convolution_geometries,
    latency_table,
)
from squeezer.core.methods.sensitivity import Sensitivity, measure_sensitivity, measured_counts
from squeezer.core.methods.speed import CALIBRATION_PLANS, CALIBRATION_TOLERANCE, _calibrated

SHAPE = (3, 16, 16)


def _small() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 48, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(48, 32, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 8, 1),
    ).eval()


def test_allowed_counts_are_multiples_the_runtime_runs_fastest():
    assert allowed_counts(64) == [16, 32, 48, 64]
    assert allowed_counts(40) == [16, 32, 40]  # the full width stays allowed
    assert allowed_counts(16) == [4, 8, 12, 16]
    assert allowed_counts(6) == [1, 2, 3, 4, 5, 6]


def test_table_is_measured_on_the_grid_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(tables, "_MEMORY", {})
    module = _small()
    graph = trace(module, SHAPE)
    table = latency_table(module, SHAPE, Runtime(threads=1), graph=graph, points=3, rounds=3, cache_dir=tmp_path)
    assert set(table.layers) == {"0", "2", "4"}
    first = table.geometries[table.layers["0"]]
    assert first.inputs == [3] and first.outputs == [16, 32, 48]  # the model's input cannot shrink
    assert table.geometries[table.layers["4"]].outputs == [8]  # nor its output
    assert all(ms > 0 for row in first.milliseconds for ms in row)
    cached = list(tmp_path.glob("latency-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["runtime"]["threads"] == 1
    monkeypatch.setattr(tables, "_MEMORY", {})
    monkeypatch.setattr(tables, "measure_table", lambda *a, **k: pytest.fail("measured again despite the cache"))
    again = latency_table(module, SHAPE, Runtime(threads=1), graph=graph, points=3, rounds=3, cache_dir=tmp_path)
    assert again.to_json() == table.to_json()


def test_table_key_follows_runtime_threads(tmp_path):
    geometries = convolution_geometries(_small(), SHAPE)
    one, two = (tables.table_key(geometries, Runtime(threads=t), 3) for t in (1, 2))
    assert one != two


def test_unknown_runtime_is_an_input_error():
    with pytest.raises(InputError) as caught:
        Runtime(name="tensorrt")
    assert caught.value.code == "unknown_runtime"


def _fixed_table(module: nn.Module, shape) -> LatencyTable:
    """A table made by hand: time proportional to in·out channels, in steps of 16 output channels."""
    table = LatencyTable(Runtime())
    for name, geometry in convolution_geometries(module, shape).items():
        ins = allowed_counts(geometry.in_channels)
        outs = allowed_counts(geometry.out_channels)
        grid = [[0.001 * i * (-(-o // 16) * 16) for o in outs] for i in ins]
        table.layers[name] = geometry.key()
        table.geometries[geometry.key()] = LayerLatency(ins, outs, grid, geometry.depthwise)
    return table


def test_choice_is_deterministic_meets_the_target_and_keeps_allowed_counts():
    module = build_architecture("resnet20", {}).eval()
    shape = (3, 32, 32)
    graph = trace(module, shape)
    table = _fixed_table(module, shape)
    scores = group_norm_scores(module, graph)
    full = choose_channels(graph, table, scores, target_ms=float("inf"))
    assert not full.removed and full.after_ms == full.before_ms
    target = 0.5 * full.before_ms
    choice = choose_channels(graph, table, scores, target)
    assert choice == choose_channels(graph, table, dict(reversed(scores.items())), target)
    assert choice.after_ms <= target < choice.before_ms
    groups = graph.channel_groups()
    for key, count in choice.kept.items():
        assert count in allowed_counts(len(groups[key]))
        assert count == sum(root not in choice.removed for root in groups[key])
    shrunk = shrink(copy.deepcopy(module), graph, set(choice.removed))
    with torch.no_grad():
        assert shrunk(torch.rand(2, *shape)).shape == (2, 10)
    shares = {1 - count / len(groups[key]) for key, count in choice.kept.items()}
    assert len(shares) > 1  # per-layer amounts, not one global level


def test_choice_follows_importance_and_stops_at_the_floor():
    module = build_architecture("resnet20", {}).eval()
    shape = (3, 32, 32)
    graph = trace(module, shape)
    table = _fixed_table(module, shape)
    scores = group_norm_scores(module, graph)
    target = 0.7 * choose_channels(graph, table, scores, float("inf")).before_ms
    flipped = {root: -value for root, value in scores.items()}
    assert (
        choose_channels(graph, table, scores, target).removed != choose_channels(graph, table, flipped, target).removed
    )
    groups = graph.channel_groups()
    floor = choose_channels(graph, table, scores, target_ms=0.0, min_keep=0.0)
    assert all(count == allowed_counts(len(groups[key]))[0] for key, count in floor.kept.items())
    kept_half = choose_channels(graph, table, scores, target_ms=0.0, min_keep=0.5)
    for key, count in kept_half.kept.items():
        assert count == min(c for c in allowed_counts(len(groups[key])) if c >= 0.5 * len(groups[key]))


def test_a_walk_of_plans_counts_the_floor_in_the_widths_it_started_from():
    """A second plan from a model already thinned to its floor removes nothing more when the floor is counted in
    the first model's widths; counted in its own, it would halve every group again."""
    module = build_architecture("resnet20", {}).eval()
    shape = (3, 32, 32)
    graph = trace(module, shape)
    widths = {key: len(roots) for key, roots in graph.channel_groups().items()}
    first = choose_channels(graph, _fixed_table(module, shape), group_norm_scores(module, graph), 0.0, min_keep=0.5)
    thinned = shrink(copy.deepcopy(module), graph, set(first.removed)).eval()
    graph = trace(thinned, shape)
    table, scores = _fixed_table(thinned, shape), group_norm_scores(thinned, graph)
    assert set(graph.channel_groups()) == set(widths)
    assert not choose_channels(graph, table, scores, 0.0, min_keep=0.5, widths=widths).removed
    again = choose_channels(graph, table, scores, 0.0, min_keep=0.5)
    assert any(count < first.kept[key] for key, count in again.kept.items())


def test_one_step_thins_each_group_by_at_most_its_step_share():
    """With `step_keep`, a step that cannot meet its target stops where every group keeps that share of its
    channels, and its sensitivity is measured no further."""
    module = build_architecture("resnet20", {}).eval()
    shape = (3, 32, 32)
    graph = trace(module, shape)
    groups = graph.channel_groups()
    step = choose_channels(graph, _fixed_table(module, shape), group_norm_scores(module, graph), 0.0, step_keep=0.5)
    assert all(2 * count >= len(groups[key]) for key, count in step.kept.items())
    assert any(count < len(groups[key]) for key, count in step.kept.items())
    assert measured_counts(64, 0.25, step_keep=0.5) == [48, 32]
    assert measured_counts(48, 0.25) == [32, 16] and measured_counts(48, 0.25, reference=128) == [32]


def _calibration_setup():
    module = build_architecture("resnet20", {}).eval()
    shape = (3, 32, 32)
    graph = trace(module, shape)
    table, scores = _fixed_table(module, shape), group_norm_scores(module, graph)
    before = choose_channels(graph, table, scores, float("inf")).before_ms

    def choose(target_ms: float):
        return choose_channels(graph, table, scores, target_ms)

    return choose, before


def test_calibration_re_aims_a_plan_that_misses_until_one_lands_within_the_tolerance():
    """A runtime whose speed-up grows faster than the table predicts: the first plan overshoots by over 10 %, a
    re-aimed one lands within it and is kept."""
    choose, before = _calibration_setup()
    measured = []

    def runtime(choice) -> float:
        measured.append((choice.before_ms / choice.after_ms) ** 1.5)
        return measured[-1]

    first = choose(before / 2.0)
    choice, speedup = _calibrated(choose, first, runtime, 2.0)
    assert measured[0] / 2.0 > CALIBRATION_TOLERANCE and 1 < len(measured) <= CALIBRATION_PLANS
    assert max(speedup / 2.0, 2.0 / speedup) <= CALIBRATION_TOLERANCE
    assert speedup == measured[-1] and choice.after_ms > first.after_ms


def test_calibration_keeps_the_plan_closest_to_its_target_when_none_lands():
    choose, before = _calibration_setup()
    readings = iter([3.0, 1.2, 2.5])  # a noisy runtime: every plan misses, the last by the least
    plans = []

    def runtime(choice) -> float:
        plans.append(choice)
        return next(readings)

    choice, speedup = _calibrated(choose, choose(before / 2.0), runtime, 2.0)
    assert len(plans) == CALIBRATION_PLANS
    assert speedup == 2.5 and choice == plans[2]


def test_measured_sensitivity_steers_the_choice_away_from_a_group_it_rates_costly():
    """Given the table and the curves, the choice is deterministic; a group whose thinning a curve rates costly keeps
    its channels while the target is met on the others, and the curves are read monotonically."""
    module = build_architecture("resnet20", {}).eval()
    shape = (3, 32, 32)
    graph = trace(module, shape)
    table = _fixed_table(module, shape)
    scores = group_norm_scores(module, graph)
    groups = graph.channel_groups()
    target = 0.7 * choose_channels(graph, table, scores, float("inf")).before_ms
    plain = choose_channels(graph, table, scores, target)
    thinned = sorted(key for key, count in plain.kept.items() if count < len(groups[key]))
    costly = thinned[0]
    counts_of = {key: [*measured_counts(len(roots), 0.25)[::-1], len(roots)] for key, roots in groups.items()}
    curves = {key: Sensitivity(counts, [0.0] * len(counts)) for key, counts in counts_of.items()}
    counts = counts_of[costly]
    curves[costly] = Sensitivity(counts, [50.0 * (len(counts) - 1 - i) for i in range(len(counts))])
    steered = choose_channels(graph, table, scores, target, sensitivity=curves)
    assert steered == choose_channels(graph, table, scores, target, sensitivity=dict(reversed(curves.items())))
    assert steered.kept[costly] == len(groups[costly]) and steered.after_ms <= target
    assert curves[costly].drop(counts[0]) == 50.0 * (len(counts) - 1) and curves[costly].drop(counts[-1]) == 0.0
    between = (counts[0] + counts[1]) / 2
    assert curves[costly].drop(counts[1]) < curves[costly].drop(between) < curves[costly].drop(counts[0])


def test_sensitivity_is_measured_per_group_and_never_falls_as_a_group_thins():
    torch.manual_seed(0)  # the weights, so the outcome does not hang on the tests run before
    module = build_architecture("resnet20", {"in_channels": 1, "input_size": 8}).eval()
    shape = (1, 8, 8)
    graph = trace(module, shape)
    x = torch.randn(64, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = module(x).argmax(1)

    def agreement(candidate: nn.Module) -> float:
        with torch.no_grad():
            return 100.0 * float((candidate(x).argmax(1) == expected).float().mean())

    curves = measure_sensitivity(module, graph, group_norm_scores(module, graph), agreement, min_keep=0.25)
    assert set(curves) == set(graph.channel_groups())
    for key, curve in curves.items():
        full = len(graph.channel_groups()[key])
        assert curve.counts == sorted(curve.counts) and curve.counts[-1] == full and curve.drops[-1] == 0.0
        assert all(count in allowed_counts(full) and count >= 0.25 * full for count in curve.counts)
        assert curve.drops == sorted(curve.drops, reverse=True)
    assert any(curve.drops[0] > 0 for curve in curves.values())
