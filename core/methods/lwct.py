"""Layer-wise compressive training (docs/METHODS.md §1): global magnitude pruning, layer ranking, then a greedy
walk that collapses the least significant layers into the ternary subspace {−σ, 0, +σ} with σ-constrained SGD,
keeping every step whose accuracy stays within the budget.

A working module's prunable layers hold float shadow weights W and masks m instead of weights: a pruned float layer
computes with W⊙m, a constrained layer with σ·sign(W)⊙m, with straight-through gradients to W (build_working_module).
The returned module has them materialised, so its weights are exactly what `core.artifacts.sqz` packs.
"""

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Unpack, cast

import torch
from torch import nn

from squeezer.core.artifacts.sqz import (
    GRID_LEVELS,
    Encoded,
    encode_state,
    encoded_bits,
    pack_encoded,
    round_for_storage,
)
from squeezer.core.checkpoint import prefixed, unprefixed
from squeezer.core.config import CompressConfig, LwctConfig
from squeezer.core.errors import UnsupportedLayerError
from squeezer.core.graph.dependency import TRANSPOSED, Producer
from squeezer.core.methods.harness import BASELINE_DONE, MethodHooks, MethodRun, progress
from squeezer.core.methods.results import LayerState, MethodResult, Trial
from squeezer.core.train import STEP_RULE

PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, *TRANSPOSED, nn.Linear)
_CHECKPOINT = "lwct"
# Progress: the pruning levels run from the baseline to _PRUNE_DONE, ranking sits just after, the layer walk takes
# the bar from _WALK_START to the end (it is where the time goes).
_PRUNE_DONE, _RANK, _WALK_START = 0.35, 0.37, 0.4
# The walk's training draws other shuffles than the pruning levels, which use seed + level index.
_TERNARY_SEED_OFFSET = 1000
# A paced group stage's later rounds of training draw shuffles of their own, clear of every stage's seed.
_ROUND_SEED_STRIDE = 100_000
# The grid search's candidates, coarsest first: for float weights every stored integer grid coarser than int8 (they
# are int8 already), for biases (float16) every one.
_BIAS_GRIDS = sorted(GRID_LEVELS, key=GRID_LEVELS.__getitem__)
_COARSER_GRIDS = [grid for grid in _BIAS_GRIDS if GRID_LEVELS[grid] < GRID_LEVELS["int8"]]


# The working module's per-layer state: the mask m (1 = kept, a buffer of every prunable layer) and, on σ-constrained
# layers, the float shadow weights W and the learned σ, which live in the module's _ConstrainedSteps and travel in
# its state dict under the layer's SHADOW and SIGMA keys. A pruned float layer's own weight is W⊙m; a constrained
# layer's weight is computed, |σ|·sign(W)⊙m, and never stepped itself.
SHADOW, MASK, SIGMA = "lwct_shadow", "lwct_mask", "lwct_sigma"


@dataclass
class _ConstrainedSteps:
    """The straight-through estimator as a StepRule (core.train.optimizer_for): the forward and backward are a plain
    network's, and the step moves the gradient. Before it, a constrained layer's weight gradient g at its kept
    positions goes to W, and ⟨g, sign W⟩ to σ, averaged over the kept weights (scaled by 1/kept) so one learning rate
    suits weights and σ alike and σ cannot run away on large layers; |σ| keeps it a magnitude. A float layer's
    gradient is masked in place. After it, the constrained weights are computed again at their kept positions; the
    pruned ones stay zero.

    W holds the kept weights only, of every constrained layer end to end in one tensor, and σ is one vector: the
    pruned weights, most of a layer, are neither stepped nor read, and every part of the rule but the dots is one
    kernel over the network, not one a layer (bench/sigma_sgd_overhead.py). Kept in the module's __dict__, so that a
    deepcopy maps it to the copy's layers; the constrained layers come first."""

    layers: list[Producer]
    names: list[str]  # the constrained layers' names in the module, their state-dict prefixes
    kept: list[torch.Tensor]  # each constrained layer's kept positions in its flattened weight
    shadow: nn.Parameter  # W at those positions, layer after layer
    sigma: nn.Parameter  # one σ a constrained layer
    # the step's working tensors, made by bind(): the constrained weights end to end (the layers' weights are views
    # into it) and a buffer for their gradients; the kept positions in it, their count a layer and its inverse (σ's
    # gradient is averaged over the kept weights); W's gradient and sign(W), with their per-layer views
    weights: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    weight_grads: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    positions: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    lengths: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.long))
    sigma_grad_scales: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    grad: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    codes: torch.Tensor = field(default_factory=lambda: torch.empty(0))
    views: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    @property
    def constrained(self) -> int:
        return len(self.names)

    def bind(self) -> list[nn.Parameter]:
        """Follow the module to its layers' device (core.train.fit moves it; a deepcopy has layers of its own), make
        the step's working tensors, and return W and σ for the optimizer."""
        if not self.constrained:
            return []
        layers = self.layers[: self.constrained]
        device = layers[0].weight.device
        if self.shadow.device != device:
            self.shadow = nn.Parameter(self.shadow.detach().to(device))
            self.sigma = nn.Parameter(self.sigma.detach().to(device))
            self.kept = [kept.to(device) for kept in self.kept]
        with torch.no_grad():
            sizes = [layer.weight.numel() for layer in layers]
            self.weights = torch.cat([layer.weight.detach().reshape(-1) for layer in layers])
            for layer, view in zip(layers, self.weights.split(sizes), strict=True):
                layer.weight.data = view.view_as(layer.weight)
            self.weight_grads = torch.zeros_like(self.weights)
            offsets = torch.tensor([0, *sizes[:-1]], device=device).cumsum(0)
            self.positions = torch.cat([kept + offset for kept, offset in zip(self.kept, offsets, strict=True)])
            lengths = self.kept_counts()
            self.lengths = torch.tensor(lengths, device=device)
            self.sigma_grad_scales = 1.0 / self.lengths.clamp(min=1)
            self.grad, self.codes = torch.zeros_like(self.shadow), torch.sign(self.shadow)
            self.views = {"grad": list(self.grad.split(lengths)), "code": list(self.codes.split(lengths))}
        return [self.shadow, self.sigma]

    @torch.no_grad()
    def before_step(self) -> None:
        weights = [cast(torch.Tensor, layer._parameters["weight"]) for layer in self.layers]
        grads = [_gradient(weight) for weight in weights]
        if self.constrained < len(self.layers):
            masks = [cast(torch.Tensor, layer._buffers[MASK]) for layer in self.layers[self.constrained :]]
            torch._foreach_mul_(grads[self.constrained :], masks)
        if not self.constrained:
            return
        torch.cat([grad.reshape(-1) for grad in grads[: self.constrained]], out=self.weight_grads)
        torch.index_select(self.weight_grads, 0, self.positions, out=self.grad)
        dots = torch.stack([torch.dot(g, code) for g, code in zip(self.views["grad"], self.views["code"], strict=True)])
        self.sigma.grad = dots * torch.sign(self.sigma) * self.sigma_grad_scales  # d|σ|/dσ, averaged
        self.shadow.grad = self.grad
        for weight in weights[: self.constrained]:
            weight.grad = None

    @torch.no_grad()
    def after_step(self) -> None:
        if not self.constrained:
            return
        torch.sign(self.shadow, out=self.codes)
        sigmas = self.sigma.abs().repeat_interleave(self.lengths, output_size=len(self.codes))
        self.weights.index_copy_(0, self.positions, self.codes * sigmas)

    def kept_counts(self) -> list[int]:
        return [len(kept) for kept in self.kept]

    def shadows(self) -> list[torch.Tensor]:
        return list(self.shadow.detach().split(self.kept_counts()))

    def save(self, state: dict, prefix: str) -> None:
        """Put each constrained layer's W (full shape, zero where pruned) and σ into a state dict."""
        for name, layer, kept, shadow, sigma in zip(
            self.names, self.layers, self.kept, self.shadows(), self.sigma.detach(), strict=False
        ):
            weight = layer.weight.detach()
            full = weight.new_zeros(weight.numel()).index_copy_(0, kept, shadow)
            state[prefix + _parameter_key(name, SHADOW)] = full.view_as(weight)
            state[prefix + _parameter_key(name, SIGMA)] = sigma.clone()

    def load(self, state: dict, prefix: str, missing: list[str], errors: list[str]) -> None:
        """Take each constrained layer's W and σ out of a state dict (core.train.fit_guarded's rollback); the
        weights follow in recompute(), once the layers have loaded theirs."""
        with torch.no_grad():
            for index, (name, layer, kept, shadow) in enumerate(
                zip(self.names, self.layers, self.kept, self.shadows(), strict=False)
            ):
                keys = prefix + _parameter_key(name, SHADOW), prefix + _parameter_key(name, SIGMA)
                if not all(key in state for key in keys):
                    missing.extend(key for key in keys if key not in state)
                    continue
                saved, sigma = state.pop(keys[0]), state.pop(keys[1])
                if saved.shape != layer.weight.shape or sigma.numel() != 1:
                    errors.append(f"{keys[0]}: shape {tuple(saved.shape)}, expected {tuple(layer.weight.shape)}")
                    continue
                shadow.copy_(saved.reshape(-1).to(kept.device)[kept])
                self.sigma[index] = sigma.reshape(()).to(self.sigma.device)

    def recompute(self) -> None:
        """Every constrained weight from W and σ, its pruned positions included."""
        self.bind()
        self.weights.zero_()
        self.after_step()

    def learned_sigmas(self) -> dict[str, float]:
        return dict(zip(self.names, self.sigma.detach().abs().cpu().tolist(), strict=True))


def _gradient(weight: torch.Tensor) -> torch.Tensor:
    """A weight's gradient; zeros for a layer the forward did not reach."""
    return weight.grad if weight.grad is not None else torch.zeros_like(weight)


def _steps(module: nn.Module) -> _ConstrainedSteps:
    return cast(_ConstrainedSteps, module.__dict__[STEP_RULE])


def _save_constrained_state(module: nn.Module, state: dict, prefix: str, _metadata) -> None:
    _steps(module).save(state, prefix)


def _take_constrained_state(
    module: nn.Module, state: dict, prefix: str, _metadata, _strict, missing, _unexpected, errors
) -> None:
    _steps(module).load(state, prefix, missing, errors)


def _recompute_after_load(module: nn.Module, _incompatible_keys) -> None:
    _steps(module).recompute()


def prunable_layers(module: nn.Module) -> dict[str, Producer]:
    return {name: cast(Producer, layer) for name, layer in module.named_modules() if isinstance(layer, PRUNABLE)}


def initial_sigma(weight: torch.Tensor, mask: torch.Tensor) -> float:
    """Least-squares optimum of ‖W − σ·sign(W)⊙m‖²: the mean |W| over the kept weights."""
    kept = weight.detach()[mask].abs()
    return float(kept.mean()) if kept.numel() else 0.0


def global_magnitude_masks(weights: dict[str, torch.Tensor], sparsity: float) -> dict[str, torch.Tensor]:
    """One network-wide |w| threshold, so every layer ends with its own sparsity (True = kept)."""
    magnitudes = torch.cat([w.detach().abs().flatten().cpu() for w in weights.values()])
    k = int(round(sparsity * magnitudes.numel()))
    if k == 0:
        return {name: torch.ones_like(w, dtype=torch.bool) for name, w in weights.items()}
    threshold = magnitudes.kthvalue(k).values
    return {name: w.detach().abs() > threshold.to(w.device) for name, w in weights.items()}


def build_working_module(
    base: nn.Module, shadow: dict[str, torch.Tensor], masks: dict[str, torch.Tensor], sigmas: dict[str, float | None]
) -> nn.Module:
    """A trainable copy of `base` holding `shadow` weights, pruned by `masks`; layers named in `sigmas` are
    σ-constrained (σ None: initialise), their weights computed from the W and σ of its _ConstrainedSteps. Train it
    through core.train (fit, optimizer_for), which applies them."""
    module = copy.deepcopy(base).cpu()
    module.load_state_dict(shadow)
    layers = prunable_layers(module)
    order = [name for name in layers if name in sigmas] + [name for name in layers if name not in sigmas]
    for name in order:
        layer, mask = layers[name], masks[name].cpu()
        with torch.no_grad():  # +0.0: W·0 leaves a −0.0, which packs as a value
            layer.weight.masked_fill_(~mask, 0.0)
        layer.register_buffer(MASK, mask.float())
    constrained = [name for name in order if name in sigmas]
    kept = [masks[name].cpu().reshape(-1).nonzero().squeeze(1) for name in constrained]
    weights = [layers[name].weight.detach().reshape(-1) for name in constrained]
    values = [
        initial_sigma(layers[name].weight, masks[name].cpu()) if sigmas[name] is None else sigmas[name]
        for name in constrained
    ]
    steps = _ConstrainedSteps(
        layers=[layers[name] for name in order],
        names=constrained,
        kept=kept,
        shadow=nn.Parameter(torch.cat([w[k] for w, k in zip(weights, kept, strict=True)]) if kept else torch.empty(0)),
        sigma=nn.Parameter(torch.tensor(values, dtype=torch.float32)),
    )
    module.__dict__[STEP_RULE] = steps
    module.register_state_dict_post_hook(_save_constrained_state)
    module.register_load_state_dict_pre_hook(_take_constrained_state)
    module.register_load_state_dict_post_hook(_recompute_after_load)
    steps.recompute()
    return module


def working_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The weights a working module's prunable layers compute with (σ·sign(W), W⊙m), by layer name."""
    return {name: layer.weight.detach() for name, layer in prunable_layers(module).items()}


def shadow_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """Plain state dict of a module, working or not (a constrained layer's shadow weights W under its weight's
    name), on CPU."""
    state, full = {}, module.state_dict()
    for key, value in full.items():
        prefix, _, leaf = key.rpartition(".")
        if leaf in (MASK, SIGMA, SHADOW):
            continue
        if leaf == "weight":  # a constrained layer's weight is computed from W
            value = full.get(_parameter_key(prefix, SHADOW), value)
        state[key] = value.detach().cpu().clone()
    return state


def learned_sigmas(module: nn.Module) -> dict[str, float]:
    return _steps(module).learned_sigmas()


def _parameter_key(layer: str, leaf: str) -> str:
    """A layer parameter's state-dict key (the root module's layer is named "")."""
    return f"{layer}.{leaf}" if layer else leaf


def materialize(
    module: nn.Module, base: nn.Module, float_precision: str = "float32", grids: dict[str, str] | None = None
) -> nn.Module:
    """A plain float32 CPU copy of `base` with the working `module`'s weights exactly as constrained (σ·sign⊙m, W⊙m),
    the float layers' rounded to `float_precision` or to their entry in `grids` (an integer grid the grid search chose,
    core.artifacts.sqz.GRID_LEVELS), the biases to float16 or their entry in `grids` ("<layer>.bias") unless
    float32: what model.sqz stores."""
    state = shadow_state(module)
    constrained = learned_sigmas(module)
    with torch.no_grad():
        for name, weight in working_weights(module).items():
            weight = weight.detach().cpu()
            if name not in constrained:
                weight = round_for_storage(weight, (grids or {}).get(name, float_precision))
            state[_parameter_key(name, "weight")] = weight.clone()
            bias = _parameter_key(name, "bias")
            if state.get(bias) is not None and float_precision != "float32":  # biases: float16 unless on a grid
                state[bias] = round_for_storage(state[bias], (grids or {}).get(bias, "float16"))
    plain = copy.deepcopy(base).cpu()
    plain.load_state_dict(state)
    return plain.eval()


def rank_layers(
    ranking: str, sparsities: dict[str, float], sizes: dict[str, int], drops: dict[str, float] | None = None
) -> list[str]:
    """Layer names from most to least significant.

    sparsity (paper): lower intra-layer sparsity = more significant; sensitivity: larger accuracy drop when the
    layer alone is ternarised = more significant; size: smaller layers first (constraining big ones saves most).
    """
    names = list(sparsities)
    if ranking == "sparsity":
        return sorted(names, key=lambda n: (sparsities[n], -sizes[n]))
    if ranking == "sensitivity":
        assert drops is not None, "the sensitivity ranking needs the measured drops"
        return sorted(names, key=lambda n: (-drops[n], sparsities[n]))
    return sorted(names, key=lambda n: (sizes[n], sparsities[n]))


def group_stage_scale(lw: LwctConfig, layers: int) -> float:
    """How many single-layer stages of training a stage that constrains `layers` at once runs (lw.group_training):
    the more layers change at once, the more the network has to recover (paced: at most that many)."""
    return math.sqrt(layers) if lw.group_training == "sqrt" else float(layers)


@dataclass
class LwctState:
    """A state of the working module within the budget: its shadow weights W, masks and the σ of its constrained
    layers, and the accuracy it scored. The run keeps the latest one for its result, even when the time limit cuts
    it, and saves it in its checkpoints."""

    shadow: dict[str, torch.Tensor]
    masks: dict[str, torch.Tensor]
    sigmas: dict[str, float]
    accuracy: float

    def working_module(self, base: nn.Module, constrain: Sequence[str] = ()) -> nn.Module:
        """The working module of this state, with the layers `constrain` names σ-constrained too (σ initialised)."""
        return build_working_module(base, self.shadow, self.masks, {**self.sigmas, **dict.fromkeys(constrain)})


@dataclass
class WalkPosition:
    """Where the layer walk stands: the candidates settled, the size of the next group and the stages trained."""

    position: int = 0
    group: int = 1
    step: int = 0


class LwctRun(MethodRun):
    """A layer-wise compressive training run: the harness plus the layer ranking and the latest state within the
    budget (`best`), which checkpoints and the result use. `compress_lwct` runs its steps in order."""

    def __init__(
        self,
        model,
        data,
        config: CompressConfig,
        **hooks: Unpack[MethodHooks],
    ):
        super().__init__(model, data, config, config.lwct, name=_CHECKPOINT, **hooks)
        self.lw = config.lwct
        self.ranking: list[str] = []
        masks = {name: layer.weight.detach() != 0 for name, layer in prunable_layers(self.base).items()}
        self.best = LwctState(shadow_state(self.base), masks, {}, math.nan)  # scored by score_start()
        # float layers stored on a grid coarser than float_precision, biases on one (grid search)
        self.grids: dict[str, str] = {}

    def plain(self, module: nn.Module, grids: dict[str, str] | None = None) -> nn.Module:
        """The working module as it will be packed (constraints applied, float weights at their stored precision:
        `grids`, by default the grid search's choices so far)."""
        return materialize(module, self.base, self.lw.float_precision, self.grids if grids is None else grids)

    def layer_states(
        self, plain: nn.Module, masks, sigmas: dict[str, float]
    ) -> tuple[list[LayerState], dict[str, Encoded]]:
        """The rows of `plain`'s layers, and its state encoded as they say it is packed (for `pack_encoded`): every
        tensor is encoded once, for the file and for its layer's bits per weight."""
        order = {name: rank for rank, name in enumerate(self.ranking)}
        layers = prunable_layers(plain)
        sparsities = {name: 1.0 - float(masks[name].float().mean()) for name in layers}
        representations = {
            name: "ternary" if name in sigmas else ("sparse-float" if sparsities[name] > 0 else "float")
            for name in layers
        }
        encoded = encode_state(
            plain.state_dict(), {f"{name}.weight": (representations[name], sigmas.get(name)) for name in layers}
        )
        states = [
            LayerState.of(
                name,
                layer,
                layer.weight.detach(),
                sparsity=sparsities[name],
                representation=representations[name],
                sigma=sigmas.get(name),
                bits=encoded_bits(encoded[f"{name}.weight"], layer.weight.numel()),
                significance_rank=order.get(name, -1),
                accepted=name in sigmas,
            )
            for name, layer in layers.items()
        ]
        return states, encoded

    def train_group(self, module: nn.Module, layers: int, seed: int, fraction: float, share: float):
        """Train a walk stage that constrains `layers` more layers; returns the module as packed and its accuracy.

        group_training=paced trains in rounds of one single-layer stage, up to `layers` rounds, and stops after the
        first whose accuracy keeps the stage within its `share` of the budget still unspent: a group that recovers
        quickly costs one round, not `layers`, and one that does not gets the linear stage's training."""
        lw = self.lw
        rounds = math.ceil(group_stage_scale(lw, layers)) if lw.group_training == "paced" else 1
        scale = 1.0 if lw.group_training == "paced" else group_stage_scale(lw, layers)
        before = self.best.accuracy
        pace = before - share * max(self.budget - (self.baseline - before), 0.0)  # a fixed sparsity may overspend
        for done in range(1, rounds + 1):
            round_seed = seed + _ROUND_SEED_STRIDE * (done - 1)
            self.train(module, lw.epochs_per_step, round_seed, "train", fraction, scale=scale, until_cut=True)
            plain = self.plain(module)
            accuracy = self.evaluate(plain, essential=True)  # a stage that trained is scored, even past the deadline
            if rounds > 1:
                self.emit(
                    "train",
                    fraction,
                    f"recovery round {done} of at most {rounds}: accuracy {accuracy:.2f} (pace {pace:.2f})",
                    round=done,
                    accuracy=accuracy,
                    pace=pace,
                )
            if accuracy >= pace or lw.epochs_per_step == 0 or self.time_up:
                break
        return plain, accuracy

    def pack(self, plain: nn.Module, masks, sigmas: dict[str, float]) -> bytes:
        """The .sqz bytes of `plain` with these masks and σ."""
        return pack_encoded(self.model.with_module(plain), self.layer_states(plain, masks, sigmas)[1])

    def record_plain(
        self,
        stage: str,
        plain: nn.Module,
        sigmas: dict[str, float],
        masks,
        layers: list[str],
        accuracy: float,
        accepted: bool,
        fraction: float,
        sparsity: float | None = None,
    ) -> Trial:
        """A trial whose compression ratio is the packed size of `plain`, the trial's module as packed (see `plain`)."""
        packed = self.pack(plain, masks, sigmas)
        return self.record(
            stage, packed, layers=layers, accuracy=accuracy, accepted=accepted, fraction=fraction, sparsity=sparsity
        )

    # -- checkpoints ----------------------------------------------------------------------------------------
    def save_walk(self, walk: WalkPosition, fraction: float) -> None:
        """Persist the accepted state, the ranking and the walk's position."""
        tensors = prefixed("shadow", self.best.shadow)
        tensors |= prefixed("mask", {k: v.to(torch.uint8) for k, v in self.best.masks.items()})
        meta = {
            "sigmas": self.best.sigmas,
            "accuracy": self.best.accuracy,
            "position": walk.position,
            "group": walk.group,
            "step": walk.step,
            "ranking": self.ranking,
        }
        self.save(tensors, meta, fraction)

    def resume_walk(self) -> WalkPosition | None:
        """The saved walk's position, its state and ranking restored into this run; None without a checkpoint."""
        saved = self.resume()
        if saved is None:
            return None
        tensors, meta = saved
        self.ranking = meta["ranking"]
        masks = {k: v.bool() for k, v in unprefixed("mask", tensors).items()}
        self.accept(LwctState(unprefixed("shadow", tensors), masks, meta["sigmas"], meta["accuracy"]))
        return WalkPosition(meta["position"], meta.get("group", 1), meta.get("step", meta["position"]))

    # -- phases ---------------------------------------------------------------------------------------------
    def accept(self, state: LwctState) -> None:
        """Remember the latest state within the budget (kept when the time limit cuts the run)."""
        self.best = state

    def score_start(self) -> None:
        """The uploaded weights at their stored float precision: the state the result falls back on, so scored even
        past the time limit."""
        self.best.accuracy = self.evaluate(self.plain(self.best.working_module(self.base)), essential=True)

    def prune(self) -> None:
        """Step 1: keep the sparsest fine-tuned global pruning level within its share of the budget (gradually, level
        by level)."""
        budget = self.budget * self.lw.prune_budget_share
        grid = [self.lw.sparsity] if self.lw.sparsity is not None else sorted(self.lw.sparsity_grid)
        for i, sparsity in enumerate(grid):
            fraction = progress(BASELINE_DONE, _PRUNE_DONE, i + 1, len(grid))
            shadow = self.best.shadow
            masks = global_magnitude_masks({n: shadow[f"{n}.weight"] for n in self.best.masks}, sparsity)
            module = build_working_module(self.base, shadow, masks, {})
            self.emit("prune", fraction, f"pruning to sparsity {sparsity:.2f}", sparsity=sparsity)
            self.train(module, self.lw.prune_epochs, self.config.seed + i, "prune", fraction, until_cut=True)
            plain = self.plain(module)
            accuracy = self.evaluate(plain, essential=True)
            within = self.within(accuracy, budget)
            self.record_plain("prune", plain, {}, masks, [], accuracy, within, fraction, sparsity)
            if within or self.lw.sparsity is not None:
                self.accept(LwctState(shadow_state(module), masks, {}, accuracy))
            if not within or self.time_up:
                break
        self.end_if_time_up()  # a pruning stage the limit cut, scored and kept if within, ends the run here

    def rank(self) -> None:
        """The layers from most to least significant (lw.ranking), on the pruned state."""
        masks = self.best.masks
        sparsities = {n: 1.0 - float(m.float().mean()) for n, m in masks.items()}
        sizes = {n: m.numel() for n, m in masks.items()}
        self.emit("rank", _RANK, f"ranking layers by {self.lw.ranking}")
        drops = self.sensitivity_drops(self.best) if self.lw.ranking == "sensitivity" else None
        self.ranking = rank_layers(self.lw.ranking, sparsities, sizes, drops)

    def walk(self, at: WalkPosition, end: float = 1.0) -> None:
        """Step 2: σ-constrain the layers from the least significant up (lw.preserve most significant stay float),
        a group at a time (lw.walk), keeping each stage within the budget; its progress runs up to `end`."""
        candidates = list(reversed(self.ranking[self.lw.preserve :]))
        while at.position < len(candidates):
            self.end_if_time_up()  # after the last stage's checkpoint
            names = candidates[at.position : at.position + at.group]
            # the layers settled so far: a group halved after a failure starts where it did, so progress never goes back
            fraction = progress(_WALK_START, end, at.position, len(candidates))
            share = len(names) / (len(candidates) - at.position)
            if self.constrain(names, self.config.seed + _TERNARY_SEED_OFFSET + at.step, fraction, share):
                at.position += len(names)
                at.group = 2 * len(names) if self.lw.walk == "group" else 1
                at.step += 1
                self.save_walk(at, fraction)
                continue
            at.step += 1
            if len(names) > 1:
                at.group = len(names) // 2  # retry from the same layer with half the group
            elif self.lw.on_violation == "stop":
                break
            else:
                at.position += 1  # this layer alone breaks the budget: it stays float

    def constrain(self, names: list[str], seed: int, fraction: float, share: float) -> bool:
        """One walk stage: the layers `names` σ-constrained on the best state and trained (train_group); accepted,
        and kept as the best state, when within the budget."""
        self.emit("train", fraction, f"constraining {', '.join(names)}", layer=names[0], layers=names)
        best = self.best
        module = best.working_module(self.base, names)
        plain, accuracy = self.train_group(module, len(names), seed, fraction, share)
        accepted = self.within(accuracy)
        sigmas = learned_sigmas(module)
        self.record_plain("ternary", plain, sigmas, best.masks, names, accuracy, accepted, fraction)
        if accepted:
            self.accept(LwctState(shadow_state(module), best.masks, sigmas, accuracy))
        return accepted

    def coarsen_grids(self, fraction: float) -> None:
        """Step 3: each layer that stayed float tries the integer grids coarser than int8, coarsest first, and keeps
        the first whose accuracy stays within the full budget (largest layers first: they save the most bytes); then
        the biases (float16) try int4 … int8 together, one grid for all, so that a network with a bias on every
        layer (a folded BatchNorm) costs five evaluations, not five a layer. Evaluation only, no training: one pass
        over the validation split per grid tried. Each pass that changed something is a trial."""
        best = self.best
        module = best.working_module(self.base)
        floats = sorted((n for n in best.masks if n not in best.sigmas), key=lambda n: -int(best.masks[n].sum()))
        biases = {
            _parameter_key(name, "bias"): name
            for name, layer in prunable_layers(module).items()
            if isinstance(getattr(layer, "bias", None), torch.Tensor)
        }
        self.emit("grid", fraction, f"trying coarser grids on {len(floats)} float layers and {len(biases)} biases")
        self.record_grid(module, [n for n in floats if self.coarsest_within(module, [n], _COARSER_GRIDS)], fraction)
        if biases and self.coarsest_within(module, list(biases), _BIAS_GRIDS):
            self.record_grid(module, list(biases.values()), fraction)

    def coarsest_within(self, module: nn.Module, keys: list[str], grids: Sequence[str]) -> bool:
        """Store all of `keys` (layers' weights by layer name, biases as "<layer>.bias") on the first of `grids`
        whose accuracy stays within the budget, if any."""
        for grid in grids:
            candidate = {**self.grids, **dict.fromkeys(keys, grid)}
            accuracy = self.evaluate(self.plain(module, candidate))
            if self.within(accuracy):
                self.grids = candidate
                self.accept(replace(self.best, accuracy=accuracy))
                return True
        return False

    def record_grid(self, module: nn.Module, coarsened: list[str], fraction: float) -> None:
        best = self.best
        if coarsened:
            self.record_plain(
                "grid", self.plain(module), best.sigmas, best.masks, coarsened, best.accuracy, True, fraction
            )

    def sensitivity_drops(self, state: LwctState) -> dict[str, float]:
        """Each layer's accuracy drop when it alone is σ-constrained on `state`, untrained."""
        return {
            name: state.accuracy
            - self.evaluate(self.plain(build_working_module(self.base, state.shadow, state.masks, {name: None})))
            for name in state.masks
        }

    def final_result(self) -> MethodResult:
        """The best state, materialised as it is packed."""
        best = self.best
        plain = self.plain(best.working_module(self.base))
        return self.result(plain, self.layer_states(plain, best.masks, best.sigmas)[0], best.accuracy)


def compress_lwct(model, data, config: CompressConfig, **hooks: Unpack[MethodHooks]) -> MethodResult:
    """Compress `model` on `data` under `config.target`; see the module docstring and docs/METHODS.md §1."""
    run = LwctRun(model, data, config, **hooks)
    if not prunable_layers(run.base):
        raise UnsupportedLayerError("the model has no Conv or Linear layer to compress")
    run.measure_baseline()
    run.score_start()
    walk = run.resume_walk()
    with run.time_limited("train"):
        if walk is None:
            run.prune()
            run.rank()
            walk = WalkPosition()
            run.save_walk(walk, _WALK_START)
        run.walk(walk)
        if config.lwct.grid_search and config.lwct.float_precision == "int8":
            run.coarsen_grids(1.0)
    return run.final_result()
