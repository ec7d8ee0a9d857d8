"""Group-sparsity neuron removal (docs/METHODS.md §3, Zhou et al. 2016): a group-lasso penalty λ·Σ‖W_n‖₂ over
the incoming weights of every neuron/filter, handled by its proximal step (group soft-threshold after every SGD step,
momentum zeroed for groups that reach zero); zeroed neurons are then removed physically with their constant output
folded into the next layer's bias. λ is searched under the accuracy budget.

A group is a removable channel class of core.graph: the incoming weights of every layer that writes that channel
(one filter or fully-connected row; a whole residual channel across a stage), plus the scale and shift of the batch
norms on it, so a zeroed filter cannot stay alive through its batch-norm shift.
"""

import copy
from typing import Unpack

import torch
from torch import nn

from squeezer.core.checkpoint import prefixed, unprefixed
from squeezer.core.config import CompressConfig, GroupConfig
from squeezer.core.graph import ChannelGraph, fold_constants, shrink
from squeezer.core.graph.dependency import TRANSPOSED, affine_parameters, producer
from squeezer.core.methods.harness import BASELINE_DONE, FINETUNE_SEED_OFFSET, MethodHooks
from squeezer.core.methods.level_search import LevelSearch, geometric_midpoint
from squeezer.core.methods.results import MethodResult
from squeezer.core.methods.structured import StructuredRun, keep_one_per_group
from squeezer.core.train import current_lr

# Training samples run through the model to measure each zeroed neuron's output, and to check that it is constant,
# before it is folded into the next layers' biases: enough to see an output that varies, few enough to stay cheap.
_FOLD_SAMPLES = 256


class GroupLasso:
    """The groups of `module` (one per removable class) and their proximal step."""

    def __init__(self, module: nn.Module, graph: ChannelGraph):
        self.roots = graph.removable()
        position = {root: i for i, root in enumerate(self.roots)}
        self.slices: list[tuple[torch.Tensor, int, torch.Tensor]] = []  # (parameter, channel axis, group per slice)
        for name, ids in graph.producers.items():
            layer = producer(module, name)
            groups = torch.tensor([position.get(r, -1) for r in graph.root(ids).tolist()])
            self.slices.append((layer.weight, 1 if isinstance(layer, TRANSPOSED) else 0, groups))
        for name, ids in graph.norms.items():
            norm = module.get_submodule(name)
            groups = torch.tensor([position.get(r, -1) for r in graph.root(ids).tolist()])
            weight, bias = affine_parameters(norm)
            if bias is not None:  # an affine batch norm
                self.slices += [(weight, 0, groups), (bias, 0, groups)]
        sizes = torch.zeros(len(self.roots))
        for parameter, axis, groups in self.slices:
            kept = groups >= 0
            sizes.index_add_(0, groups[kept], torch.full((int(kept.sum()),), parameter.numel() / parameter.shape[axis]))
        # Group lasso weighs each group by √(its size) (Yuan & Lin), so a wide layer's neurons are not spared for
        # their larger norms; normalised to mean 1 so λ keeps its scale.
        root_sizes = sizes.sqrt()
        self.weights = root_sizes / root_sizes.mean().clamp_min(1e-12)

    def norms(self) -> torch.Tensor:
        """‖W_n‖₂ of every group."""
        squares = torch.zeros(len(self.roots), device=self.slices[0][0].device)
        for parameter, axis, groups in self.slices:
            per_slice = (
                parameter.detach().pow(2).transpose(0, axis).reshape(parameter.shape[axis], -1).sum(1)
            )  # 1-D: BN
            kept = groups >= 0
            squares.index_add_(0, groups[kept].to(parameter.device), per_slice[kept.to(parameter.device)])
        return squares.sqrt()

    def zeroed(self) -> set[int]:
        return {self.roots[i] for i in (self.norms() == 0).nonzero().flatten().tolist()}

    @torch.no_grad()
    def proximal_step(self, optimizer: torch.optim.Optimizer, amount: float) -> None:
        """W_n ← max(0, 1 − amount·w_n/‖W_n‖₂)·W_n (w_n the group's weight); the momentum of groups at zero is reset so
        they do not bounce back."""
        norms = self.norms()
        scale = (1.0 - amount * self.weights.to(norms.device) / norms.clamp_min(1e-12)).clamp_min(0.0)
        for parameter, axis, groups in self.slices:
            factor = torch.cat([scale, scale.new_ones(1)])[groups.to(scale.device)]  # -1: frozen, untouched
            shape = [1] * parameter.dim()
            shape[axis] = -1
            parameter.mul_(factor.view(shape))
            buffer = optimizer.state.get(parameter, {}).get("momentum_buffer")
            if buffer is not None:
                buffer.mul_((factor != 0).to(buffer.dtype).view(shape))


def remove_zeroed(
    module: nn.Module, graph: ChannelGraph, zeroed: set[int], x: torch.Tensor
) -> tuple[nn.Module, set[int]]:
    """Physically removes the zeroed classes of `module` (in place) whose constant output folds exactly into the
    next layers' biases; every channel group keeps one channel. Returns the module and the classes removed."""
    order = [root for root in graph.removable() if root in zeroed]
    candidates = keep_one_per_group(graph, order, len(order))
    unfoldable = fold_constants(module, graph, candidates, x)
    removed = candidates - unfoldable
    return shrink(module, graph, removed), removed


class _PenaltySearch(LevelSearch):
    """Group's levels: the weight λ of a group-sparse training of the baseline, whose zeroed groups are then removed
    and the rest fine-tuned; the best model so far is kept shrunk."""

    def __init__(self, run: StructuredRun, settings: GroupConfig, seed: int, baseline: float):
        super().__init__(
            run, settings.penalties, settings.refinements, geometric_midpoint, start=BASELINE_DONE, baseline=baseline
        )
        self.settings, self.seed = settings, seed
        self.best = run.base
        self.sample = run.data.x_train[:_FOLD_SAMPLES]

    def resume(self) -> None:
        resumed = self.run.resume()
        if resumed is None:
            return
        tensors, meta = resumed
        self.restore(meta)
        if best_state := unprefixed("best", tensors):  # none while the baseline is still the best
            self.best = shrink(copy.deepcopy(self.run.base), self.run.graph, self.best_removed)
            self.best.load_state_dict(best_state)

    def try_level(self, penalty: float, index: int, fraction: float) -> bool:
        """Group-sparse training of the baseline with weight `penalty`, removal of the zeroed groups, fine-tuning."""
        run, settings = self.run, self.settings
        working = copy.deepcopy(run.base)
        lasso = GroupLasso(working, run.graph)
        run.emit("sparse", fraction, f"group-sparse training with λ={penalty:.3g}", penalty=penalty)
        run.train(
            working,
            settings.sparse_epochs,
            self.seed + index,
            "sparse",
            fraction,
            after_step=lambda optimizer: lasso.proximal_step(optimizer, current_lr(optimizer) * penalty),
            until_cut=True,
        )
        shrunk, removed = remove_zeroed(working, run.graph, lasso.zeroed(), self.sample)
        message = f"λ={penalty:.3g}: {len(removed)} neurons removed; fine-tuning"
        run.emit("finetune", fraction, message, removed=len(removed))
        seed = self.seed + FINETUNE_SEED_OFFSET + index
        run.train(shrunk, settings.epochs_per_step, seed, "finetune", fraction, until_cut=True)  # none once cut
        accuracy = run.evaluate(shrunk, essential=True)
        within = run.within(accuracy)
        level = len(removed) / len(run.graph.removable())
        run.record_shrunk(f"group λ={penalty:.3g}", shrunk, len(removed), accuracy, within, fraction, level)
        if within:
            self.best, self.best_removed, self.best_accuracy = shrunk, removed, accuracy
        return within

    def best_tensors(self) -> dict[str, torch.Tensor]:
        return prefixed("best", self.best.state_dict()) if self.best is not self.run.base else {}


def compress_group(model, data, config: CompressConfig, **hooks: Unpack[MethodHooks]) -> MethodResult:
    """Compress `model` on `data` under `config.target`; see the module docstring and docs/METHODS.md §3. With a
    `checkpoint_dir`, the best model and the outcome of every λ are saved after each λ tried, and a rerun resumes
    there, replaying the λs already tried."""
    run = StructuredRun(model, data, config, config.group, "group", **hooks)
    baseline, _ = run.measure_baseline()
    search = _PenaltySearch(run, config.group, config.seed, baseline)
    search.resume()
    with run.time_limited("sparse"):
        if run.graph.removable():
            search.search()
    best = search.best.cpu().eval()
    layers = run.layer_states(
        best, "removed the neurons whose weights the group-lasso penalty zeroed", "kept: no neuron reached zero"
    )
    return run.result(best, layers, search.best_accuracy)
