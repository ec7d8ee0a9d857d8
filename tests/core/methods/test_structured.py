"""What filter and group share: the level search (the grid up to its first miss, then bisection towards the edge)
and checkpoints a stopped run resumes from."""

import pytest

from squeezer.core.config import AccuracyTarget, CompressConfig, FilterConfig, GroupConfig
from squeezer.core.errors import Cancelled
from squeezer.core.methods.filter import compress_filter
from squeezer.core.methods.group import compress_group
from squeezer.core.methods.level_search import arithmetic_midpoint, geometric_midpoint, search_levels

pytestmark = pytest.mark.slow  # trains models: in the full suite, not the fast tier


def _search(levels, edge, refinements, midpoint=arithmetic_midpoint):
    tried = []

    def attempt(level, index):
        tried.append((index, level))
        return level <= edge  # within the budget up to `edge`

    search_levels(levels, attempt, refinements, midpoint)
    return tried


def test_walks_the_grid_then_bisects_between_the_last_hit_and_the_first_miss():
    tried = _search([0.4, 0.2, 0.6, 0.8], edge=0.5, refinements=2)
    assert [level for _, level in tried] == [0.2, 0.4, 0.6, pytest.approx(0.5), pytest.approx(0.55)]
    assert [index for index, _ in tried] == [1, 2, 3, 4, 5]


def test_no_refinement_when_every_level_fits_or_none_asked():
    assert [level for _, level in _search([0.1, 0.2], edge=1.0, refinements=3)] == [0.1, 0.2]
    assert [level for _, level in _search([0.1, 0.2, 0.3], edge=0.15, refinements=0)] == [0.1, 0.2]


def test_a_miss_on_the_first_level_bisects_down_from_it():
    assert [level for _, level in _search([0.3, 0.6], edge=0.1, refinements=2)] == [
        0.3,
        pytest.approx(0.15),
        pytest.approx(0.075),
    ]


def test_geometric_midpoint_suits_penalty_weights():
    assert geometric_midpoint(0.1, 1.0) == pytest.approx(0.316, abs=1e-3)
    assert geometric_midpoint(0.0, 0.4) == pytest.approx(0.2)


@pytest.mark.parametrize("method", ["filter", "group"])
def test_a_stopped_run_resumes_from_its_checkpoint_and_ends_as_an_uninterrupted_one(
    method, digits_model, digits, tmp_path
):
    own_options = {
        "filter": FilterConfig(
            init=["l1"],
            importance_epochs=1,
            epochs_per_step=1,
            min_steps_per_stage=30,
            levels=[0.2, 0.4, 0.6],
            refinements=1,
        ),
        "group": GroupConfig(
            penalties=[0.1, 0.3, 1.0], sparse_epochs=1, epochs_per_step=1, min_steps_per_stage=30, refinements=1
        ),
    }
    config = CompressConfig(
        method=method, device="cpu", target=AccuracyTarget(max_drop=1.0), **{method: own_options[method]}
    )
    compress = {"filter": compress_filter, "group": compress_group}[method]
    uninterrupted = compress(digits_model, digits, config)

    stop = []
    with pytest.raises(Cancelled):  # stopped while training the level after the first one tried
        compress(
            digits_model,
            digits,
            config,
            checkpoint_dir=tmp_path,
            should_stop=lambda: bool(stop),
            on_event=lambda event: stop.append(True) if event.stage == "step" else None,
        )
    events = []
    resumed = compress(digits_model, digits, config, checkpoint_dir=tmp_path, on_event=events.append)
    assert any(e.stage == "checkpoint" and "resumed" in e.message for e in events)
    assert len([e for e in events if e.stage == "step"]) == len(resumed.trials) - 1  # the first level is not rerun
    assert [(t.stage, t.accuracy, t.accepted) for t in resumed.trials] == [
        (t.stage, t.accuracy, t.accepted) for t in uninterrupted.trials
    ]
    assert resumed.accuracy == uninterrupted.accuracy
    assert [layer.channels_kept for layer in resumed.layers] == [layer.channels_kept for layer in uninterrupted.layers]
