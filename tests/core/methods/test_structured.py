"""The level search shared by filter and group: the grid up to its first miss, then bisection towards the edge."""

import pytest

from core.methods.structured import arithmetic_midpoint, geometric_midpoint, search_levels


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
        0.3, pytest.approx(0.15), pytest.approx(0.075)]


def test_geometric_midpoint_suits_penalty_weights():
    assert geometric_midpoint(0.1, 1.0) == pytest.approx(0.316, abs=1e-3)
    assert geometric_midpoint(0.0, 0.4) == pytest.approx(0.2)
