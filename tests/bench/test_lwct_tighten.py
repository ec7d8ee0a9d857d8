"""bench/lwct_tighten.py: lwct's tightening step, kept as an experiment outside the engine."""

import pytest
from lwct_tighten import compress_lwct_tightened

from squeezer.core.config import AccuracyTarget, CompressConfig, LwctConfig
from squeezer.core.methods.lwct import compress_lwct


@pytest.mark.slow
def test_tightening_spends_the_budget_the_walk_left_on_sparser_levels(digits_model, digits):
    """A generous budget: pruning stops at its share, the walk constrains every layer, and tightening then tries the
    grid's next levels on the walked model, keeping every pruned weight pruned and the accepted state within the
    budget."""
    config = CompressConfig(
        device="cpu",
        target=AccuracyTarget(max_drop=3.0),
        lwct=LwctConfig(
            sparsity_grid=[0.3, 0.5, 0.7, 0.8, 0.9],
            prune_epochs=1,
            epochs_per_step=1,
            lr=0.02,
            min_steps_per_stage=0,
            prune_budget_share=0.01,
        ),
    )
    result = compress_lwct_tightened(digits_model, digits, config)
    by_stage = {stage: [t for t in result.trials if t.stage == stage] for stage in ("prune", "ternary", "tighten")}
    assert by_stage["tighten"], [t.stage for t in result.trials]
    assert result.trials.index(by_stage["tighten"][0]) > result.trials.index(by_stage["ternary"][-1])
    pruned_to = max(t.sparsity for t in by_stage["prune"] if t.accepted)
    assert all(t.sparsity > pruned_to for t in by_stage["tighten"])
    assert result.target_met and result.baseline_accuracy - result.accuracy <= 3.0
    accepted = [t for t in result.trials if t.accepted]
    assert result.accuracy == accepted[-1].accuracy  # a rejected level changes nothing
    for before, after in zip(accepted, accepted[1:], strict=False):
        assert after.stage != "tighten" or after.compression_ratio > before.compression_ratio

    untightened = compress_lwct(digits_model, digits, config)
    assert not [t for t in untightened.trials if t.stage == "tighten"]
