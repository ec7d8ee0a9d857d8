"""Tightening, an lwct step that lost its experiment: after the walk, the next levels of sparsity_grid are tried on the
walked model (σ-constrained layers included, their learned σ kept), one training stage each, until one breaks the
budget or packs no smaller. On three of the four default workloads it gained nothing and cost one stage
(bench/results/lwct_defaults_ablate_tighten.json), so lwct does not run it; `compress_lwct_tightened` is lwct with it
between the walk and the grid search, to measure it again.

    from lwct_tighten import compress_lwct_tightened  # with bench/ on sys.path, as its scripts run
"""

from typing import Unpack

from squeezer.core.config import CompressConfig
from squeezer.core.methods import lwct
from squeezer.core.methods.harness import MethodHooks, progress
from squeezer.core.methods.results import MethodResult

# The walk's progress ends here; tightening takes the rest of the bar.
WALK_DONE = 0.92
# Tightening's training draws other shuffles than the pruning levels and the walk.
TIGHTEN_SEED_OFFSET = 2000
# Global masks hit a grid level to within rounding: a level this close to the walked model's sparsity is not sparser.
LEVEL_TOLERANCE = 1e-3


def sparsity(state: lwct.LwctState) -> float:
    masks = state.masks.values()
    return 1.0 - sum(int(mask.sum()) for mask in masks) / sum(mask.numel() for mask in masks)


def tighten(run: lwct.LwctRun, seed: int) -> None:
    """Sparser levels on the walked model while within the full budget; a level is kept only if it also packs
    smaller. Pruning happens only among kept weights, so a level never revives a pruned one."""
    current = sparsity(run.best)
    levels = [level for level in sorted(run.lw.sparsity_grid) if level > current + LEVEL_TOLERANCE]
    for i, level in enumerate(levels):
        fraction = progress(WALK_DONE, 1.0, i + 1, len(levels))
        best = run.best
        best_ratio = [trial for trial in run.trials if trial.accepted][-1].compression_ratio
        masks = lwct.global_magnitude_masks({n: best.shadow[f"{n}.weight"] for n in best.masks}, level)
        masks = {n: mask & best.masks[n] for n, mask in masks.items()}
        module = lwct.build_working_module(run.base, best.shadow, masks, best.sigmas)
        run.emit("tighten", fraction, f"tightening to sparsity {level:.2f}", sparsity=level)
        run.train(module, run.lw.epochs_per_step, seed + i, "tighten", fraction)
        plain = run.plain(module)
        accuracy = run.evaluate(plain)
        sigmas = lwct.learned_sigmas(module)
        packed = run.pack(plain, masks, sigmas)
        accepted = run.within(accuracy) and run.original_bytes / len(packed) > best_ratio
        run.record(
            "tighten", packed, layers=[], accuracy=accuracy, accepted=accepted, fraction=fraction, sparsity=level
        )
        if not accepted:
            break
        run.accept(lwct.LwctState(lwct.shadow_state(module), masks, sigmas, accuracy))


def compress_lwct_tightened(model, data, config: CompressConfig, **hooks: Unpack[MethodHooks]) -> MethodResult:
    """lwct (core.methods.lwct.compress_lwct) with tightening after the walk, when the sparsity is searched."""
    run = lwct.LwctRun(model, data, config, **hooks)
    run.measure_baseline()
    run.score_start()
    with run.time_limited("train"):
        run.prune()
        run.rank()
        searched = config.lwct.sparsity is None
        run.walk(lwct.WalkPosition(), end=WALK_DONE if searched else 1.0)
        if searched:
            tighten(run, config.seed + TIGHTEN_SEED_OFFSET)
        if config.lwct.grid_search and config.lwct.float_precision == "int8":
            run.coarsen_grids(1.0)
    return run.final_result()
