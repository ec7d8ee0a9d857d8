"""Plain supervised training shared by every method: SGD with momentum and cross-entropy.

Hooks let methods keep their constraints (masks, projections) after every optimizer step and let the
caller stop cooperatively; seeded shuffling keeps CPU runs reproducible.

Uploaded models come with weight scales (folded BatchNorm, another optimiser's history) that no fixed learning rate
suits, so a job picks its rate from its own data (`choose_lr`, a short bounded range test) and every stage runs under a
divergence guard (`fit_guarded`): a loss far above its start, or NaN/inf, rolls the stage back and retries it at a
lower rate, a bounded number of times.
"""

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

import torch
from torch import nn

from squeezer.core.events import StopCheck, stop_point

if TYPE_CHECKING:
    from squeezer.core.intake.data import Samples


@dataclass(frozen=True)
class TrainOptions:
    """How a run trains: SGD with momentum at `lr` (annealed to zero over the run with lr_schedule="cosine", so
    short recovery stages end closer to a minimum), at most `max_samples` samples an epoch (a fresh random subset
    each epoch), augmentation (`augmented`), and with a teacher `distill_weight` of knowledge distillation (a
    compressed model recovers faster when it learns the baseline's full output, not just labels). `seed` fixes the
    shuffles and the augmentation."""

    lr: float
    momentum: float = 0.9
    weight_decay: float = 0.0
    batch_size: int = 128
    max_samples: int | None = None
    lr_schedule: str = "constant"
    augment: str = "none"
    distill_weight: float = 0.0
    device: torch.device | str = "cpu"
    seed: int = 0


class Trainer:
    """One training run of `module`, in place: its optimizer (with the module's StepRule, if any), mixed precision on
    CUDA only (so CPU runs stay bit-reproducible for a seed), the schedule and the seeded shuffles. `step` trains one
    batch, `fit` whole epochs.

    `after_step(optimizer)` runs under no_grad after every step: proximal steps, and resets of their momentum.
    `should_stop` is checked before every step (Cancelled; a core.events.Guard also raises its time-limit exceptions
    there); with a `divergence` rule, Diverged is raised as soon as the loss breaks it (the module is then left
    mid-way: the caller rolls back)."""

    def __init__(
        self,
        module: nn.Module,
        options: TrainOptions,
        *,
        teacher: nn.Module | None = None,
        after_step: Callable[[torch.optim.Optimizer], None] | None = None,
        should_stop: StopCheck | None = None,
        divergence: "DivergenceRule | None" = None,
    ):
        self.module, self.options, self.after_step, self.should_stop = module, options, after_step, should_stop
        self.device = torch.device(options.device)
        module.to(self.device)
        self.teacher = teacher.to(self.device).eval() if teacher is not None else None
        self.optimizer = optimizer_for(
            module, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay
        )
        self.use_amp = self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        self.generator = torch.Generator().manual_seed(options.seed)
        self.scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
        self.watch = _DivergenceWatch(divergence) if divergence is not None else None

    def step(self, xb: torch.Tensor, yb: torch.Tensor) -> float:
        """One SGD step on a batch on the trainer's device; returns its loss."""
        if self.options.augment != "none":
            xb, yb = augmented(xb, yb, self.options.augment, self.generator)
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
            logits = self.module(xb)
            loss = self._loss(logits, xb, yb)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.after_step is not None:
            with torch.no_grad():
                self.after_step(self.optimizer)
        if self.scheduler is not None:
            self.scheduler.step()
        value = loss.detach().float().item()
        if self.watch is not None:
            self.watch.observe(value)
        return value

    def _loss(self, logits: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        loss = task_loss(logits, yb)
        weight = self.options.distill_weight
        if self.teacher is None or weight <= 0:
            return loss
        with torch.no_grad():
            target = self.teacher(xb)
        return (1 - weight) * loss + weight * distillation_loss(logits, target)

    def fit(
        self, x: "Samples | torch.Tensor", y: torch.Tensor, epochs: int, on_epoch: Callable[[int, float], None] | None
    ) -> float:
        """`epochs` passes over (x, y), a batch being at most the epoch's samples whatever batch_size asks; returns
        the mean loss of the last epoch. A terminal Softmax/LogSoftmax/Sigmoid is bypassed meanwhile: the loss sees
        logits."""
        per_epoch = len(x) if self.options.max_samples is None else min(len(x), self.options.max_samples)
        batch_size = max(1, min(self.options.batch_size, per_epoch))
        if self.options.lr_schedule == "cosine":
            total_steps = max(epochs * -(-per_epoch // batch_size), 1)
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, total_steps)
        # a lazy source (an image folder's Samples) is decoded on access: DataLoader workers read ahead
        lazy = cast("Samples", x) if getattr(x, "lazy", False) else None
        reader = lazy.reader() if lazy is not None else None
        last_loss = 0.0
        with contextlib.ExitStack() as stack:
            stack.callback(self.module.eval)
            if reader is not None:
                stack.callback(reader.close)
            for model in (self.module, self.teacher):
                if model is not None:
                    stack.enter_context(logits_only(model, per_sample=y.dim() == 1))
            self.module.train()
            for epoch in range(epochs):
                order = torch.randperm(len(x), generator=self.generator)[:per_epoch]
                # each batch in file order: sequential reads of a memory map
                batches = [order[start : start + batch_size].sort().values for start in range(0, per_epoch, batch_size)]
                last_loss = self._epoch(x, y, batches, lazy, reader)
                if on_epoch is not None:
                    on_epoch(epoch, last_loss)
        return last_loss

    def _epoch(self, x, y: torch.Tensor, batches: list[torch.Tensor], lazy: "Samples | None", reader) -> float:
        if reader is not None:
            reader.start(batches)
        total, seen = 0.0, 0
        for idx in batches:
            stop_point(self.should_stop)
            if lazy is not None and reader is not None:
                xb = lazy.converted(reader.next(), self.device)
            else:
                xb = _batch(x, idx, self.device)
            total += self.step(xb, y[idx].to(self.device, non_blocking=True)) * len(idx)
            seen += len(idx)
        return total / max(seen, 1)


def fit(
    module: nn.Module,
    x: "Samples | torch.Tensor",
    y: torch.Tensor,
    *,
    epochs: int,
    teacher: nn.Module | None = None,
    after_step: Callable[[torch.optim.Optimizer], None] | None = None,
    should_stop: StopCheck | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    divergence: "DivergenceRule | None" = None,
    **options: Any,
) -> float:
    """Trains `module` in place on (x, y) for `epochs` under TrainOptions(**options) and returns the mean loss of the
    last epoch: a Trainer's whole run in one call (see Trainer for the hooks)."""
    trainer = Trainer(
        module,
        TrainOptions(**options),
        teacher=teacher,
        after_step=after_step,
        should_stop=should_stop,
        divergence=divergence,
    )
    return trainer.fit(x, y, epochs, on_epoch)


def _batch(x, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """One batch of inputs on `device`: stored values moved first and converted there (core.intake.data.Samples)."""
    if hasattr(x, "batch"):
        return x.batch(idx, device)
    return x[idx].to(device, non_blocking=True)


AUGMENT_PADDING = 4  # crop+flip: pad by this many pixels (reflected), then crop back at a random offset (CIFAR recipe)


def augmented(
    x: torch.Tensor, y: torch.Tensor, augment: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standard fine-tuning augmentation of one batch: `flip` mirrors a random half left to right, `crop+flip` also
    crops each sample back from a reflect-padded copy at a random offset. Masks (segmentation) move with their
    images."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    masks = y.dim() == 3
    x = torch.where(flip.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)
    if masks:
        y = torch.where(flip.to(y.device).view(-1, 1, 1), y.flip(-1), y)
    if augment == "crop+flip":
        h, w = x.shape[-2:]
        pad = min(AUGMENT_PADDING, h - 1, w - 1)  # reflection needs more pixels than it pads
        padded = nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
        padded_y = nn.functional.pad(y[:, None].float(), (pad, pad, pad, pad), mode="reflect")[:, 0] if masks else None
        offsets = torch.randint(0, 2 * pad + 1, (len(x), 2), generator=generator).tolist()
        x = torch.stack([padded[i, :, r : r + h, c : c + w] for i, (r, c) in enumerate(offsets)])
        if padded_y is not None:
            y = torch.stack([padded_y[i, r : r + h, c : c + w] for i, (r, c) in enumerate(offsets)]).long()
    return x, y


def task_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy on class logits; with one output channel and masks (binary segmentation), binary cross-entropy
    of the logit against the mask's positive class (any non-zero index)."""
    if logits.dim() == 4 and logits.shape[1] == 1 and y.dim() == 3:
        return nn.functional.binary_cross_entropy_with_logits(logits[:, 0].float(), (y > 0).float())
    return nn.functional.cross_entropy(logits, y)


# Output heads exporters append to the logits; a module between them and the output that changes nothing is skipped.
_HEADS = (nn.Softmax, nn.LogSoftmax, nn.Sigmoid)
_NEUTRAL_CLASS_NAMES = ("Identity", "OnnxCopyIdentity")


def terminal_head(module: nn.Module, *, per_sample: bool = True) -> str | None:
    """The qualified name of a Softmax, LogSoftmax (over classes) or Sigmoid that produces the model's output, or
    None. Found in torch.fx graphs (onnx2torch's conversions) and in nn.Sequential tails. `per_sample`: the output
    is (batch, classes), where dim -1 is the class axis too."""
    if isinstance(module, torch.fx.GraphModule):
        outputs = [node for node in module.graph.nodes if node.op == "output"]
        node = outputs[0].args[0] if outputs and len(outputs[0].args) == 1 else None
        while isinstance(node, torch.fx.Node) and node.op == "call_module":
            child = module.get_submodule(str(node.target))
            if isinstance(child, _HEADS):
                return str(node.target) if _over_classes(child, per_sample) else None
            if type(child).__name__ not in _NEUTRAL_CLASS_NAMES or not node.args:
                return None
            node = node.args[0]
        return None
    if isinstance(module, nn.Sequential) and len(module):
        name, last = list(module.named_children())[-1]
        if isinstance(last, _HEADS):
            return name if _over_classes(last, per_sample) else None
        inner = terminal_head(last, per_sample=per_sample)
        return f"{name}.{inner}" if inner else None
    return None


def _over_classes(head: nn.Module, per_sample: bool) -> bool:
    dim = getattr(head, "dim", 1)
    return isinstance(head, nn.Sigmoid) or dim == 1 or (per_sample and dim == -1)


@contextlib.contextmanager
def logits_only(module: nn.Module, *, per_sample: bool = True) -> Iterator[str | None]:
    """Within the block, the model's terminal head (`terminal_head`) is an Identity, so training computes its loss on
    the logits (not a softmax of a softmax); the head is back afterwards, in every exported artifact. Yields its
    name."""
    name = terminal_head(module, per_sample=per_sample)
    if name is None:
        yield None
        return
    parent_name, _, leaf = name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    head = getattr(parent, leaf)
    setattr(parent, leaf, nn.Identity())
    try:
        yield name
    finally:
        setattr(parent, leaf, head)


# min_steps_per_stage holds in full up to this many parameters and shrinks as 1/√params beyond, to MIN_STEPS_FLOOR.
FULL_STEPS_PARAMS, MIN_STEPS_FLOOR = 300_000, 60


def min_steps(settings, params: int | None = None) -> int:
    """The fewest SGD steps a stage runs: `settings.min_steps_per_stage` for networks of up to 300k parameters (LeNet-5,
    ResNet-20), fewer for larger ones, whose steps cost more and whose stages are many (ResNet-56 178, ResNet-110 125,
    ResNet-50 60); never below 60 or above the setting."""
    steps = settings.min_steps_per_stage
    if params is None or params <= FULL_STEPS_PARAMS:
        return steps
    return min(steps, max(MIN_STEPS_FLOOR, round(steps * math.sqrt(FULL_STEPS_PARAMS / params))))


# A module trained through weights computed from other parameters (core.methods.lwct's working module) holds a
# StepRule under this key of its __dict__; optimizer_for applies it around every step.
STEP_RULE = "_step_rule"


class StepRule(Protocol):
    def bind(self) -> list[nn.Parameter]:
        """Follow the module to its present device; return what the step trains besides its own parameters."""

    def before_step(self) -> None:
        """Turn the computed weights' gradients into gradients of what they are computed from."""

    def after_step(self) -> None:
        """Compute the weights again from the stepped parameters."""


def optimizer_for(module: nn.Module, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD over `module`'s trainable parameters, with the module's StepRule (if any) hooked onto every step: inside
    the step, so that a GradScaler has unscaled the gradients and skips the rule with the step."""
    rule: StepRule | None = module.__dict__.get(STEP_RULE)
    params = [p for p in module.parameters() if p.requires_grad] + (rule.bind() if rule is not None else [])
    optimizer = sgd(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if rule is not None:
        optimizer.register_step_pre_hook(lambda *_: rule.before_step())
        optimizer.register_step_post_hook(lambda *_: rule.after_step())
    return optimizer


def sgd(params, *, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    """SGD with the multi-tensor (foreach) update on every device, CPU included (torch's CPU default is one Python
    loop of three ops per parameter): a σ-constrained network adds one scalar σ per layer, which that loop paid for
    (bench/sigma_sgd_overhead.py)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)


def stage_epochs(settings, epochs: int, train_samples: int, params: int | None = None) -> int:
    """`epochs` stretched to at least `min_steps(settings, params)` SGD steps, so small data sets recover too."""
    if epochs <= 0:
        return 0
    per_epoch = min(train_samples, settings.max_train_samples or train_samples)
    stretched = math.ceil(min_steps(settings, params) / math.ceil(per_epoch / settings.batch_size))
    if settings.max_stretch_epochs is not None:
        stretched = min(stretched, settings.max_stretch_epochs)
    return max(epochs, stretched)


def fit_options(settings) -> dict:
    """The keyword arguments of `fit` that a method's training settings (core.config.StructuredTraining) fix."""
    return {
        "lr": settings.lr,
        "momentum": settings.momentum,
        "weight_decay": settings.weight_decay,
        "batch_size": settings.batch_size,
        "max_samples": settings.max_train_samples,
        "lr_schedule": settings.lr_schedule,
        "augment": settings.augment,
    }


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The step size of the update just taken: proximal steps must shrink by the same η as the gradient step."""
    return optimizer.param_groups[0]["lr"]


DISTILL_TEMPERATURE = 2.0


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Hinton's KL divergence between softened class distributions (dim 1: classes, also per pixel), scaled by T².
    One output channel is a sigmoid's logit z, i.e. the two-class logits (0, z)."""
    t = DISTILL_TEMPERATURE
    if logits.shape[1] == 1:
        logits, teacher_logits = (torch.cat([torch.zeros_like(z), z], 1) for z in (logits, teacher_logits))
    log_student = torch.log_softmax(logits.float() / t, dim=1)
    log_teacher = torch.log_softmax(teacher_logits.float() / t, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(1)
    return kl.mean() * t * t


# -- learning rate and divergence -------------------------------------------------------------------------------


class Diverged(Exception):
    """A training stage's loss broke its DivergenceRule; the stage must be rolled back."""

    def __init__(self, step: int, loss: float, start_loss: float):
        super().__init__(f"loss {loss:.4g} at step {step} (started at {start_loss:.4g})")
        self.step, self.loss, self.start_loss = step, loss, start_loss


@dataclass(frozen=True)
class DivergenceRule:
    """When a stage counts as diverged: a NaN/inf loss, or a smoothed loss above factor × start + margin.

    The start is the first step's loss, computed before any update (so a rate that blows up within a few steps cannot
    move the reference with it); the smoothed loss is an exponential average (`smoothing`) of the step losses, so one
    bad batch does not trip it. The margin keeps a nearly converged baseline (loss ≈ 0.02) from tripping on noise.
    """

    factor: float = 2.0
    margin: float = 0.5
    smoothing: float = 0.9


class _DivergenceWatch:
    def __init__(self, rule: DivergenceRule):
        self.rule, self.steps, self.start, self.smoothed = rule, 0, math.nan, math.nan

    def observe(self, loss: float) -> None:
        self.steps += 1
        if not math.isfinite(loss):
            raise Diverged(self.steps, loss, self.start)
        if self.steps == 1:
            self.start = self.smoothed = loss
            return
        self.smoothed = self.rule.smoothing * self.smoothed + (1 - self.rule.smoothing) * loss
        if self.smoothed > self.rule.factor * self.start + self.rule.margin:
            raise Diverged(self.steps, self.smoothed, self.start)


@dataclass
class StageOutcome:
    """What a guarded stage did: the rate it finished at, the tries it rolled back, whether any try held."""

    loss: float
    lr: float
    retries: list[dict] = field(default_factory=list)  # per rollback: {"lr", "step", "loss", "start_loss"}
    recovered: bool = True  # False: every try diverged and the module is back at its starting weights


def fit_guarded(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    max_retries: int = 3,
    lr_factor: float = 0.3,
    divergence: DivergenceRule = DivergenceRule(),
    **options,
) -> StageOutcome:
    """`fit` under a divergence rule: a diverged try is rolled back to the stage's starting weights and repeated at
    `lr_factor` × its rate, at most `max_retries` times. When no try holds, the module keeps its starting weights and
    the outcome says `recovered=False`, so the caller reports it rather than keeping a wrecked model."""
    start = copy.deepcopy(module.state_dict())
    retries: list[dict] = []
    for _ in range(max_retries + 1):
        try:
            loss = fit(module, x, y, lr=lr, divergence=divergence, **options)
            return StageOutcome(loss, lr, retries)
        except Diverged as error:
            retries.append({"lr": lr, "step": error.step, "loss": error.loss, "start_loss": error.start_loss})
            module.load_state_dict(start)
            lr *= lr_factor
    return StageOutcome(math.nan, retries[-1]["lr"], retries, recovered=False)


LR_CANDIDATE_FACTORS = (1.0, 0.3, 0.1, 0.03, 0.01)  # × the configured rate, which is the ceiling


@dataclass
class RangeTest:
    """The outcome of `choose_lr`: the rate picked and the probe loss every candidate reached."""

    lr: float
    start_loss: float
    losses: dict[float, float]  # candidate rate → loss on the probe samples after its probe steps (inf: diverged)
    skipped: str | None = None  # why no candidate was tried (the configured rate is kept)


# A training step costs about this many forward passes (forward, backward, update): what the range test's estimate of
# its own cost assumes. Under MIN_RANGE_STEPS steps a candidate's loss says nothing, so the test is skipped instead.
TRAIN_FORWARDS = 3.0
MIN_RANGE_STEPS = 5


def choose_lr(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    lr: float,
    steps: int = 20,
    probe_samples: int = 512,
    tolerance: float = 0.25,
    candidates: tuple[float, ...] = LR_CANDIDATE_FACTORS,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    seed: int = 0,
    should_stop: StopCheck | None = None,
    budget_s: float | None = None,
) -> RangeTest:
    """A short, bounded range test on the job's own data: each candidate rate (`lr` × `candidates`) trains a copy of
    the module for `steps` SGD steps, and the loss it then reaches on a fixed probe subset is compared. The largest
    rate whose loss is within `tolerance` (relative, plus 0.01) of the best is chosen: the fastest rate that does not
    hurt. Costs len(candidates) × steps steps of at most `batch_size` samples (the whole training set when it is
    smaller) plus as many probe evaluations, each batch after a `should_stop` check; `module` itself is not changed.
    Within `budget_s` (estimated from the probe's first evaluation), fewer steps are taken, or none (`skipped`)."""
    device = torch.device(device)
    batch_size = max(1, min(batch_size, len(x)))
    probe = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:probe_samples]
    x_probe, y_probe = x[probe], y[probe]
    started = time.monotonic()
    start_loss = _mean_loss(copy.deepcopy(module), x_probe, y_probe, device, batch_size, should_stop)
    if budget_s is not None:
        probe_s = time.monotonic() - started
        step_s = TRAIN_FORWARDS * batch_size * probe_s / max(len(x_probe), 1)
        steps = min(steps, math.floor((budget_s / len(candidates) - probe_s) / max(step_s, 1e-9)))
        if steps < MIN_RANGE_STEPS:
            needed = len(candidates) * (MIN_RANGE_STEPS * step_s + probe_s)
            return RangeTest(lr, start_loss, {}, f"its shortest run would take {needed:.0f} s of {budget_s:.0f} s")
    losses: dict[float, float] = {}
    for factor in candidates:
        rate = lr * factor
        trial = copy.deepcopy(module)
        try:
            fit(
                trial,
                x,
                y,
                epochs=math.ceil(steps * batch_size / len(x)),
                lr=rate,
                momentum=momentum,
                weight_decay=weight_decay,
                batch_size=batch_size,
                device=device,
                seed=seed,
                max_samples=steps * batch_size,
                divergence=DivergenceRule(),
                should_stop=should_stop,
            )
            losses[rate] = _mean_loss(trial, x_probe, y_probe, device, batch_size, should_stop)
        except Diverged:
            losses[rate] = math.inf
    finite = [loss for loss in losses.values() if math.isfinite(loss)]
    if not finite:
        return RangeTest(min(losses), start_loss, losses)
    best = min(finite)
    chosen = max(rate for rate, loss in losses.items() if loss <= best * (1 + tolerance) + 0.01)
    return RangeTest(chosen, start_loss, losses)


def _mean_loss(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    batch_size: int,
    should_stop: StopCheck | None = None,
) -> float:
    module.to(device).eval()
    total = 0.0
    with torch.no_grad(), logits_only(module, per_sample=y.dim() == 1):
        for start in range(0, len(x), batch_size):
            stop_point(should_stop)
            logits = module(x[start : start + batch_size].to(device))
            count = min(batch_size, len(x) - start)
            total += float(task_loss(logits.float(), y[start : start + batch_size].to(device))) * count
    loss = total / max(len(x), 1)
    return loss if math.isfinite(loss) else math.inf
