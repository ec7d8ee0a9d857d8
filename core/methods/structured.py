"""What the channel-removing methods (filter, group) share: the run state (events, stop checks, time limit,
training, trials) and the per-layer report of channels kept and removed."""

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core.artifacts.sqz import pack_sqz
from core.checkpoint import load_checkpoint, save_checkpoint
from core.config import CompressConfig, StructuredTraining
from core.errors import Cancelled
from core.events import Event, EventCallback, StopCheck
from core.graph import ChannelGraph, trace, with_channels
from core.graph.dependency import PRODUCERS
from core.graph.surgery import width
from core.measure import float32_bytes, metric_function, resolve_device
from core.methods.lwct import LayerState, Trial
from core.train import fit, fit_options, stage_epochs


@dataclass
class ChannelLayerState(LayerState):
    """A layer of a channel-pruned model: LayerState plus how many output channels stayed, and why."""

    channels_before: int
    channels_kept: int
    channels_removed: int
    reason: str


class TimeLimit(Exception):
    """Internal: the configured time limit ran out; the best state so far is kept."""


class StructuredRun:
    """State of one channel-removal run: the traced graph, the budget, events and the trials tried."""

    def __init__(
        self,
        model,
        data,
        config: CompressConfig,
        settings: StructuredTraining,
        on_event: EventCallback,
        should_stop: StopCheck,
        checkpoint_dir: Path | None = None,
        name: str = "structured",
    ):
        self.model, self.data, self.config, self.settings = model, data, config, settings
        self.on_event, self.user_stop = on_event, should_stop
        self.checkpoint_dir, self.name = checkpoint_dir, name
        self.device = resolve_device(config.device)
        self.score = metric_function(config.target.metric)  # the one metric the budget is measured in
        self.deadline = time.monotonic() + config.time_limit_s if config.time_limit_s else math.inf
        self.original_bytes = float32_bytes(model.module)
        self.base = copy.deepcopy(model.module).float().cpu().eval()
        self.graph: ChannelGraph = trace(self.base, tuple(model.input_shape))
        self.trials: list[Trial] = []

    def stop_check(self) -> bool:
        if self.user_stop():
            return True
        if time.monotonic() > self.deadline:
            raise TimeLimit
        return False

    def emit(self, stage: str, fraction: float, message: str = "", **data) -> None:
        self.on_event(Event(stage=stage, fraction=min(max(fraction, 0.0), 1.0), message=message, data=data))

    def save(self, tensors: dict[str, torch.Tensor], meta: dict, fraction: float) -> None:
        """A checkpoint of the method's state (with the trials so far) that `resume` hands back after a restart."""
        if self.checkpoint_dir is None:
            return
        trials = [dataclasses.asdict(trial) for trial in self.trials]
        path = save_checkpoint(self.checkpoint_dir, self.name, tensors, {**meta, "trials": trials, "fraction": fraction})
        self.emit("checkpoint", fraction, "checkpoint written", path=str(path))

    def resume(self) -> tuple[dict[str, torch.Tensor], dict] | None:
        """The last checkpoint's tensors and metadata (its trials restored into this run), or None."""
        saved = load_checkpoint(self.checkpoint_dir, self.name)
        if saved is not None:
            self.trials = [Trial(**trial) for trial in saved[1]["trials"]]
            self.emit("checkpoint", saved[1]["fraction"], "resumed from checkpoint")
        return saved

    def measure_baseline(self) -> tuple[float, float]:
        """The baseline's score and the budget in absolute points, both announced as events."""
        self.emit("baseline", 0.01, "evaluating the baseline", unsupported=self.graph.unsupported)
        baseline = self.evaluate(self.base)
        budget = self.config.target.allowed_drop(baseline)
        self.emit("baseline", 0.05, f"baseline accuracy {baseline:.2f}", accuracy=baseline, allowed_drop=budget)
        return baseline, budget

    def train(self, module: nn.Module, epochs: int, seed: int, stage: str, fraction: float, after_step=None) -> None:
        """`epochs` of SGD, stretched to at least min_steps_per_stage steps so small data sets recover."""
        epochs = stage_epochs(self.settings, epochs, len(self.data.y_train))
        if epochs <= 0:
            return

        def on_epoch(epoch: int, loss: float) -> None:
            self.emit(stage, fraction, f"epoch {epoch + 1}/{epochs}", epoch=epoch + 1, loss=loss)

        fit(
            module,
            self.data.x_train,
            self.data.y_train,
            epochs=epochs,
            device=self.device,
            seed=seed,
            after_step=after_step,
            should_stop=self.stop_check,
            on_epoch=on_epoch,
            teacher=self.base if self.settings.distill else None,
            distill_weight=self.settings.distill,
            **fit_options(self.settings),
        )
        module.cpu()

    def evaluate(self, module: nn.Module) -> float:
        if self.user_stop():
            raise Cancelled("stopped by request")
        accuracy = self.score(module, self.data.x_val, self.data.y_val, device=self.device)
        module.cpu()
        return accuracy

    def record(
        self,
        stage: str,
        shrunk: nn.Module,
        removed: int,
        accuracy: float,
        accepted: bool,
        fraction: float,
        level: float,
    ) -> Trial:
        """A point on the trade-off curve; its compression ratio is the packed size of the shrunk model."""
        packed = pack_sqz(with_channels(self.model, shrunk), [])
        layers = [name for name, count in self.widths(shrunk).items() if count != len(self.graph.producers[name])]
        trial = Trial(
            step=len(self.trials) + 1,
            stage=stage,
            layers=layers,
            accuracy=accuracy,
            compression_ratio=self.original_bytes / len(packed),
            accepted=accepted,
            sparsity=level,
        )
        self.trials.append(trial)
        self.emit(
            "step",
            fraction,
            f"{stage}: {removed} channels removed, {'accepted' if accepted else 'rejected'}",
            step=trial.step,
            accuracy=accuracy,
            compression_ratio=trial.compression_ratio,
            accepted=accepted,
            channels_removed=removed,
        )
        return trial

    def widths(self, module: nn.Module) -> dict[str, int]:
        return {name: width(module.get_submodule(name)) for name in self.graph.producers}

    def layer_states(self, shrunk: nn.Module, why_removed: str, why_kept: str) -> list[ChannelLayerState]:
        """One row per convolution and linear layer of the original model: its channels before and after, and why."""
        widths, states = self.widths(shrunk), []
        for name, layer in self.base.named_modules():
            if not isinstance(layer, PRODUCERS):
                continue
            before = width(layer)
            if name in self.graph.producers:
                kept = widths[name]
                frozen = self.graph.why_frozen(name)
                reason = why_removed if kept < before else (f"left alone: {frozen}" if frozen else why_kept)
            else:
                kept, reason = before, "left alone: not reached by the traced graph"
            weight = shrunk.get_submodule(name).weight.detach()
            states.append(
                ChannelLayerState(
                    name=name,
                    type=type(layer).__name__,
                    shape=list(weight.shape),
                    params=weight.numel(),
                    sparsity=float((weight == 0).float().mean()),
                    representation="float",
                    sigma=None,
                    bits=32.0,
                    significance_rank=-1,
                    accepted=kept < before,
                    channels_before=before,
                    channels_kept=kept,
                    channels_removed=before - kept,
                    reason=reason,
                )
            )
        return states


def keep_one_per_group(graph: ChannelGraph, order: list[int], count: int) -> set[int]:
    """The first `count` classes of `order` that can go while every channel group keeps at least one channel."""
    group_of = {root: key for key, roots in graph.channel_groups().items() for root in roots}
    left = {key: len(roots) for key, roots in graph.channel_groups().items()}
    removed: set[int] = set()
    for root in order:
        if len(removed) >= count:
            break
        if left[group_of[root]] > 1:
            left[group_of[root]] -= 1
            removed.add(root)
    return removed


def search_levels(
    levels: list[float],
    attempt: Callable[[float, int], bool],
    refinements: int,
    midpoint: Callable[[float, float], float],
) -> None:
    """Tries `levels` in increasing order until one misses the budget, then bisects `refinements` times between the
    last level within it (0 when none was) and the one that missed. `attempt(level, index)` runs and records one
    trial and says whether it stayed within the budget; `index` counts attempts, for progress."""
    low, high, index = 0.0, None, 0
    for level in sorted(levels):
        index += 1
        if not attempt(level, index):
            high = level
            break
        low = level
    if high is None:
        return
    for _ in range(refinements):
        level = midpoint(low, high)
        if not low < level < high:
            return
        index += 1
        if attempt(level, index):
            low = level
        else:
            high = level


def arithmetic_midpoint(low: float, high: float) -> float:
    return (low + high) / 2


def geometric_midpoint(low: float, high: float) -> float:
    """For scale parameters such as a penalty weight; from zero, half the upper end."""
    return math.sqrt(low * high) if low > 0 else high / 2
