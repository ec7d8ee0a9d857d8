"""The walk through speed-up targets (core.methods.walk), scripted: each aim is answered with a speed-up reached
and whether it kept within the budget, as a job's plans and recoveries would answer it."""

import math

import pytest

from squeezer.core.methods.walk import MIN_STEP, Walk


def _answered(walk: Walk, answers: list[tuple[float | None, bool]]) -> list[float]:
    """The aims the walk takes when its steps land as `answers` say (None: exactly on the aim)."""
    aims = []
    for aim, (reached, within) in zip(walk.aims(), answers, strict=False):
        aims.append(aim)
        walk.took(aim if reached is None else reached, within=within)
    assert next(walk.aims(), None) is None, "the walk wanted more steps than the script answers"
    return aims


def test_a_far_target_is_reached_in_equal_steps_none_over_max_step():
    aims = _answered(Walk([3.0], max_step=1.5, retries=2), [(None, True)] * 3)
    assert aims == pytest.approx([3 ** (1 / 3), 3 ** (2 / 3), 3.0])


def test_a_step_that_lands_short_leaves_its_target_short_rather_than_making_the_next_step_larger():
    walk = Walk([2.0, 2.5], max_step=1.5, retries=2)
    aims = _answered(walk, [(1.2, True), (None, True), (None, True)])
    assert aims == pytest.approx([2**0.5, 1.2 * 1.5, 2.5])  # 1.8: capped, not 2.0 in a 1.67× step
    assert walk.kept == pytest.approx(2.5) and not walk.ended


def test_a_miss_halves_the_step_and_the_walk_goes_on_towards_the_targets():
    walk = Walk([1.5, 2.0], max_step=1.5, retries=2)
    aims = _answered(walk, [(1.56, False), (1.2, True), (None, True), (None, True), (None, True)])
    step = math.sqrt(1.56)  # half of the 1.56× step that missed, in log
    assert aims[:2] == pytest.approx([1.5, 1.5**0.5])  # 1.5 in two equal steps, each under the halved step
    assert aims[2] == pytest.approx(1.2 * min(1.5 / 1.2, step))
    assert all(b / a <= step + 1e-9 for a, b in zip(aims[1:], aims[2:], strict=False))
    assert walk.kept == pytest.approx(2.0) and walk.misses == 1


def test_a_miss_that_landed_short_of_its_aim_halves_the_step_it_aimed_at():
    """A plan that ran short of its aim and still missed: the recovery's noise may have decided it, so the halved
    step is the aimed one's, not the smaller one measured."""
    aims = _answered(Walk([2.0], max_step=1.5, retries=0), [(1.2, False)])
    assert aims == pytest.approx([2**0.5])
    walk = Walk([2.0], max_step=1.5, retries=1)
    aims = _answered(walk, [(1.2, False), (None, False)])
    assert aims == pytest.approx([2**0.5, 2**0.25])  # √(√2) caps it: 2 in four steps, not √1.2 in five


def test_the_walk_ends_after_retries_plus_one_misses():
    walk = Walk([1.5, 2.0, 4.0], max_step=1.5, retries=1)
    aims = _answered(walk, [(None, True), (1.9, False), (None, False)])
    assert aims[:2] == pytest.approx([1.5, 2.0])
    assert aims[2] == pytest.approx(1.5 * (2.0 / 1.5) ** 0.5)  # the 2.0 it aimed at, in two halved steps
    assert walk.ended and walk.kept == 1.5


def test_the_walk_ends_where_a_halved_step_would_be_under_min_step_or_a_plan_gains_nothing():
    short = Walk([1.15], max_step=1.5, retries=5)
    assert _answered(short, [(1.15, False)]) == [1.15] and short.ended  # √1.15 < MIN_STEP
    assert math.sqrt(1.15) < MIN_STEP
    stuck = Walk([2.0, 3.0], max_step=1.5, retries=5)
    assert _answered(stuck, [(1.0, True)]) == pytest.approx([2**0.5]) and stuck.ended


def test_planned_from_the_baseline_a_miss_bisects_below_it_until_the_gap_is_under_min_step():
    walk = Walk([2.0, 4.0], max_step=1.5, retries=3, gradual=False)
    aims = _answered(walk, [(None, True), (3.9, False), (None, True), (None, False)])
    first = math.sqrt(2.0 * 3.9)
    assert aims == pytest.approx([2.0, 4.0, first, math.sqrt(first * 3.9)])  # 4.0 again would miss again
    assert walk.ended and walk.kept == pytest.approx(first)  # the next midpoint is under MIN_STEP above it


def test_a_walk_goes_on_from_its_checkpointed_progress():
    script = [(None, True), (1.9, False), (None, True)]
    whole = Walk([1.5, 2.0, 4.0], max_step=1.5, retries=2)
    aims = whole.aims()
    for reached, within in script:
        whole.took(next(aims) if reached is None else reached, within=within)
    resumed = Walk([1.5, 2.0, 4.0], max_step=1.5, retries=2)
    resumed.resume(whole.progress())
    assert resumed == whole and next(resumed.aims()) == next(whole.aims())


@pytest.mark.parametrize(
    "saved",
    [{"kept": float("nan")}, {"kept": 0.5}, {"step": -1.0}, {"step": 1.0}, {"tried": 10**9}, {"misses": -1}],
)
def test_a_checkpointed_progress_out_of_bounds_is_refused(saved):
    with pytest.raises(ValueError, match="checkpointed walk"):
        Walk([2.0], max_step=1.5, retries=2).resume({"kept": 1.0} | saved)
