"""Importance-weight filter pruning (docs/METHODS.md §2): learnable per-channel gates trained under an L1 penalty score
the filters; channels are removed in steps of increasing global level, each fine-tuned, and the largest level
within the error tolerance is kept. Removal is physical (core.graph), so parameters, MACs and latency fall.

Gates sit where a channel's scale is set: on the batch norm that alone reads a convolution, else on the layer's
own output (a gate before batch norm would be normalised away). A channel class spanning several layers (a
residual stage) shares one gate. The L1 penalty is applied as its proximal step (soft-threshold by lr·λ after
every SGD step), which gives exact zeros and is the same under mixed precision.
"""

import copy
from typing import Unpack

import torch
from torch import nn

from squeezer.core.checkpoint import prefixed, unprefixed
from squeezer.core.config import CompressConfig, FilterConfig
from squeezer.core.graph import ChannelGraph, mask_consumers, shrink
from squeezer.core.graph.dependency import TRANSPOSED, affine_parameters, producer
from squeezer.core.methods.harness import BASELINE_DONE, FINETUNE_SEED_OFFSET, MethodHooks, progress
from squeezer.core.methods.level_search import LevelSearch, arithmetic_midpoint
from squeezer.core.methods.results import MethodResult
from squeezer.core.methods.structured import StructuredRun, keep_one_per_group
from squeezer.core.train import current_lr

# Progress: importance learning runs from the baseline to here; the level search takes the rest of the bar.
_IMPORTANCE_DONE = 0.35


class ImportanceGates(nn.Module):
    """`module` with one learnable gate per removable channel class: y_k = α_k · layer_k(x)."""

    def __init__(self, module: nn.Module, graph: ChannelGraph, init: torch.Tensor):
        super().__init__()
        self.module, self.graph = module, graph
        self.roots = graph.removable()
        self.alpha = nn.Parameter(init.clone().float())
        position = {root: i for i, root in enumerate(self.roots)}
        self.sites: dict[str, torch.Tensor] = {}  # module name -> gate index per channel (-1: frozen, no gate)
        for layer, ids in graph.producers.items():
            index = torch.tensor([position.get(r, -1) for r in graph.root(ids).tolist()])
            if (index >= 0).any():
                self.sites[graph.norm_after.get(layer, layer)] = index
        self.handles = [
            module.get_submodule(name).register_forward_hook(self._gate_hook(index))
            for name, index in self.sites.items()
        ]

    def _gate_hook(self, index: torch.Tensor):
        def gate(layer, inputs, output):
            gates = torch.cat([self.alpha, self.alpha.new_ones(1)])[index.to(output.device)]
            return output * gates.to(output.dtype).view((1, -1) + (1,) * (output.dim() - 2))

        return gate

    def forward(self, x):
        return self.module(x)

    @torch.no_grad()
    def fold(self) -> nn.Module:
        """Multiplies the gates into the weights (exact: each gate scales an affine layer's output) and returns the
        plain module."""
        for handle in self.handles:
            handle.remove()
        alpha = torch.cat([self.alpha.detach().cpu(), torch.ones(1)])
        for name, index in self.sites.items():
            layer = self.module.get_submodule(name).cpu()
            weight, bias = affine_parameters(layer)
            gates = alpha[index]
            channel_dim = 1 if isinstance(layer, TRANSPOSED) else 0
            shape = [1] * weight.dim()
            shape[channel_dim] = -1
            weight.mul_(gates.view(shape))
            if bias is not None:
                bias.mul_(gates)
        return self.module


def initial_gates(kind: str, module: nn.Module, graph: ChannelGraph, seed: int) -> torch.Tensor:
    """ones; uniform U(0.5, 1.5); normal N(1, 0.1²); l1: the filter's L1 norm over the layer's largest (a class
    spanning several layers takes the mean)."""
    count = len(graph.removable())
    generator = torch.Generator().manual_seed(seed)
    if kind == "ones":
        return torch.ones(count)
    if kind == "uniform":
        return torch.rand(count, generator=generator) + 0.5
    if kind == "normal":
        return 1.0 + 0.1 * torch.randn(count, generator=generator)
    position = {root: i for i, root in enumerate(graph.removable())}
    total, members = torch.zeros(count), torch.zeros(count)
    for name, ids in graph.producers.items():
        weight = producer(module, name).weight.detach().cpu()
        norms = (
            (weight.transpose(0, 1) if isinstance(module.get_submodule(name), TRANSPOSED) else weight)
            .flatten(1)
            .abs()
            .sum(1)
        )
        norms = norms / norms.max().clamp_min(1e-12)
        for channel, root in enumerate(graph.root(ids).tolist()):
            if root in position:
                total[position[root]] += norms[channel]
                members[position[root]] += 1
    return total / members.clamp_min(1)


def combined_order(graph: ChannelGraph, scores: list[torch.Tensor]) -> list[int]:
    """Removable classes from least to most important: each strategy's |α| is divided by its channel group's (the
    layer's) mean, ranked globally, and the ranks are averaged. The mean, not the max: one dominant gate would make
    every other channel of its layer look removable (unet-small lost most of its full-resolution filters that way)."""
    roots = graph.removable()
    position = {root: i for i, root in enumerate(roots)}
    ranks = []
    for score in scores:
        normalised = score.abs().clone()
        for members in graph.channel_groups().values():
            index = torch.tensor([position[r] for r in members])
            normalised[index] = normalised[index] / normalised[index].mean().clamp_min(1e-12)
        ranks.append(normalised.argsort().argsort().float())
    mean_rank = torch.stack(ranks).mean(0)
    return [roots[i] for i in mean_rank.argsort(stable=True).tolist()]


def soft_threshold(parameter: nn.Parameter, amount: float) -> None:
    """Proximal step of amount·‖p‖₁."""
    parameter.copy_(parameter.sign() * (parameter.abs() - amount).clamp_min(0.0))


def learn_importance(
    run: StructuredRun, settings, seed: int, baseline: float
) -> tuple[list[int], nn.Module | None, float]:
    """Trains importance gates once per initialisation strategy; returns the removal order, and the first strategy's
    model with its gates folded when it scores above the baseline (else None) with its score: a start that had spent
    the budget would leave nothing for removal."""
    scores, folded, accuracy = [], None, baseline
    for i, kind in enumerate(settings.init):
        fraction = progress(BASELINE_DONE, _IMPORTANCE_DONE, i + 1, len(settings.init))
        gated = ImportanceGates(copy.deepcopy(run.base), run.graph, initial_gates(kind, run.base, run.graph, seed + i))
        run.emit("importance", fraction, f"learning importance weights ({kind} initialisation)", init=kind)

        def threshold(optimizer: torch.optim.Optimizer, gates: nn.Parameter = gated.alpha) -> None:
            soft_threshold(gates, current_lr(optimizer) * settings.penalty)

        run.train(gated, settings.importance_epochs, seed + i, "importance", fraction, after_step=threshold)
        scores.append(gated.alpha.detach().cpu())
        if i == 0:
            candidate = gated.fold().eval()
            score = run.evaluate(candidate)
            if score > baseline:
                folded, accuracy = candidate, score
    return combined_order(run.graph, scores), folded, accuracy


class _FilterSearch(LevelSearch):
    """Filter's levels: the share of channel classes removed, least important first (`order`), from the best state
    so far, each level fine-tuned with its channels masked before they are removed."""

    def __init__(self, run: StructuredRun, settings: FilterConfig, seed: int, baseline: float):
        super().__init__(
            run, settings.levels, settings.refinements, arithmetic_midpoint, start=_IMPORTANCE_DONE, baseline=baseline
        )
        self.settings, self.seed = settings, seed
        self.order: list[int] = []
        self.start_module = run.base  # what levels are removed from: the baseline, or its gated copy folded
        self.best_state = run.base.state_dict()

    def prepare(self) -> None:
        """The removal order and the starting point: a resumed run's from its checkpoint, else learned and saved."""
        resumed = self.run.resume()
        if resumed is None:
            self.order, folded, self.best_accuracy = learn_importance(
                self.run, self.settings, self.seed, self.best_accuracy
            )
            if folded is not None:
                self.start_module, self.best_state = folded, copy.deepcopy(folded.state_dict())
            self.save(_IMPORTANCE_DONE)
            return
        tensors, meta = resumed
        self.restore(meta)
        self.order = meta["order"]
        if folded_state := unprefixed("start", tensors):
            self.start_module = copy.deepcopy(self.run.base)
            self.start_module.load_state_dict(folded_state)
        self.best_state = unprefixed("best", tensors)

    def removal(self, level: float) -> set[int]:
        return keep_one_per_group(self.run.graph, self.order, round(level * len(self.order)))

    def changes_nothing(self, level: float) -> bool:
        return self.removal(level) <= self.best_removed

    def try_level(self, level: float, index: int, fraction: float) -> bool:
        run, removed = self.run, self.removal(level)
        working = self.best_full_width()
        handles = mask_consumers(working, run.graph, removed)
        run.emit(
            "prune", fraction, f"removing {len(removed)} of {len(self.order)} channels (level {level:.3f})", level=level
        )
        seed = self.seed + FINETUNE_SEED_OFFSET + index
        run.train(working, self.settings.epochs_per_step, seed, "prune", fraction, until_cut=True)
        accuracy = run.evaluate(working, essential=True)
        for handle in handles:
            handle.remove()
        within = run.within(accuracy)
        run.record_shrunk(
            "prune", shrink(copy.deepcopy(working), run.graph, removed), len(removed), accuracy, within, fraction, level
        )
        if within:
            self.best_state, self.best_removed, self.best_accuracy = (
                copy.deepcopy(working.state_dict()),
                removed,
                accuracy,
            )
        return within

    def best_full_width(self) -> nn.Module:
        """A copy of the best state so far with every channel still in place (removal is physical only at the end)."""
        module = copy.deepcopy(self.start_module)
        module.load_state_dict(self.best_state)
        return module

    def best_tensors(self) -> dict[str, torch.Tensor]:
        folded_start = (
            prefixed("start", self.start_module.state_dict()) if self.start_module is not self.run.base else {}
        )
        return prefixed("best", self.best_state) | folded_start

    def checkpoint_meta(self) -> dict:
        return {"order": self.order}


def compress_filter(model, data, config: CompressConfig, **hooks: Unpack[MethodHooks]) -> MethodResult:
    """Compress `model` on `data` under `config.target`; see the module docstring and docs/METHODS.md §2. With a
    `checkpoint_dir`, the learned order and the best state are saved after every level tried, and a rerun resumes
    there: the levels already tried are replayed from their recorded outcomes, not trained again. With
    `filter.latency` set, the latency-aware mode runs instead (core.methods.latency_pruning)."""
    if config.filter.latency is not None:
        from squeezer.core.methods.latency_pruning import compress_latency

        return compress_latency(model, data, config, **hooks)
    run = StructuredRun(model, data, config, config.filter, "filter", **hooks)
    baseline, _ = run.measure_baseline()
    search = _FilterSearch(run, config.filter, config.seed, baseline)
    with run.time_limited("prune"):
        if run.graph.removable():
            search.prepare()
            search.search()
    shrunk = shrink(search.best_full_width(), run.graph, search.best_removed).eval()
    layers = run.layer_states(
        shrunk,
        "removed its least important channels (learned importance weights)",
        "kept: its channels scored above the removal level",
    )
    return run.result(shrunk, layers, search.best_accuracy)
