"""Plain supervised training shared by every method: SGD with momentum and cross-entropy.

Hooks let methods keep their constraints (masks, projections) after every optimizer step and let the
caller stop cooperatively; seeded shuffling keeps CPU runs reproducible.
"""

import math
from collections.abc import Callable

import torch
from torch import nn

from core.errors import Cancelled


def fit(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
    seed: int = 0,
    max_samples: int | None = None,
    after_step: Callable[[torch.optim.Optimizer], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_epoch: Callable[[int, float], None] | None = None,
    lr_schedule: str = "constant",
    teacher: nn.Module | None = None,
    distill_weight: float = 0.0,
) -> float:
    """Train `module` in place on (x, y) and return the mean loss of the last epoch.

    `max_samples` caps the samples seen per epoch (a fresh random subset each epoch).
    `after_step(optimizer)` runs under no_grad after every step: proximal steps, and resets of their momentum.
    `lr_schedule="cosine"` anneals the learning rate to zero over the run: short recovery stages end closer to a
    minimum than at a constant rate. Mixed precision is used on CUDA only, so CPU runs stay bit-reproducible for a given seed.
    With a `teacher`, the loss mixes in `distill_weight` of knowledge distillation (KL divergence to the teacher's
    softened outputs): a compressed model recovers faster when it learns the baseline's full output, not just labels.
    Raises Cancelled as soon as `should_stop()` returns True (checked before every step).
    """
    device = torch.device(device)
    module.to(device).train()
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    if teacher is not None:
        teacher.to(device).eval()
    generator = torch.Generator().manual_seed(seed)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    n = len(x)
    per_epoch = n if max_samples is None else min(n, max_samples)
    total_steps = max(epochs * -(-per_epoch // batch_size), 1)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps) if lr_schedule == "cosine" else None
    last_loss = 0.0
    try:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator)[:per_epoch]
            total, seen = 0.0, 0
            for start in range(0, per_epoch, batch_size):
                if should_stop is not None and should_stop():
                    raise Cancelled("stopped by request")
                idx = order[start : start + batch_size]
                xb, yb = x[idx].to(device, non_blocking=True), y[idx].to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                    logits = module(xb)
                    loss = loss_fn(logits, yb)
                    if teacher is not None and distill_weight > 0:
                        with torch.no_grad():
                            target = teacher(xb)
                        loss = (1 - distill_weight) * loss + distill_weight * distillation_loss(logits, target)
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
                if after_step is not None:
                    with torch.no_grad():
                        after_step(optimizer)
                if scheduler is not None:
                    scheduler.step()
                total += loss.detach().float().item() * len(idx)
                seen += len(idx)
            last_loss = total / max(seen, 1)
            if on_epoch is not None:
                on_epoch(epoch, last_loss)
    finally:
        module.eval()
    return last_loss


def stage_epochs(settings, epochs: int, train_samples: int) -> int:
    """`epochs` stretched to at least `settings.min_steps_per_stage` SGD steps, so small data sets recover too."""
    if epochs <= 0:
        return 0
    per_epoch = min(train_samples, settings.max_train_samples or train_samples)
    return max(epochs, math.ceil(settings.min_steps_per_stage / math.ceil(per_epoch / settings.batch_size)))


def fit_options(settings) -> dict:
    """The keyword arguments of `fit` that a method's training settings (core.config.StructuredTraining) fix."""
    return {"lr": settings.lr, "momentum": settings.momentum, "weight_decay": settings.weight_decay,
            "batch_size": settings.batch_size, "max_samples": settings.max_train_samples,
            "lr_schedule": settings.lr_schedule}


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    """The step size of the update just taken: proximal steps must shrink by the same η as the gradient step."""
    return optimizer.param_groups[0]["lr"]


DISTILL_TEMPERATURE = 2.0


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Hinton's KL divergence between softened class distributions (dim 1: classes, also per pixel), scaled by T²."""
    t = DISTILL_TEMPERATURE
    log_student = torch.log_softmax(logits.float() / t, dim=1)
    log_teacher = torch.log_softmax(teacher_logits.float() / t, dim=1)
    kl = (log_teacher.exp() * (log_teacher - log_student)).sum(1)
    return kl.mean() * t * t
