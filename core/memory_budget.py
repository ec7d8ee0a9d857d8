"""The memory a job will need on a worker, estimated at submission from one sample's activations, so that a small
model that blows up its input (an upsampling layer) is refused before it is queued rather than killed mid-run.

One forward pass of one sample, with a hook on every leaf module, measures each layer's input and output. From them:
- evaluation (core.measure.predict, batches of at most EVALUATION_BATCH without autograd) holds about one layer's
  input and output at a time: batch × the largest input + output of any layer;
- training (core.train.fit, the method's batch_size) keeps every layer's output for the backward pass and builds its
  gradient: batch × 2 × the sum of the outputs;
- the model itself: weights, their gradients, the optimiser's momentum and the baseline kept for distillation and
  comparison, 4 × the parameter bytes;
- the engine's own footprint (its imports), ENGINE_BYTES.
Deterministic: shapes only, whatever the sample's values."""

import dataclasses
import math

import torch
from torch import nn

from squeezer.core import limits
from squeezer.core.config import CompressConfig, StructuredTraining
from squeezer.core.errors import InputError
from squeezer.core.measure import MAX_BATCH
from squeezer.core.methods.registry import MethodName, method

FLOAT_BYTES = 4
# Address space the engine takes before it holds any tensor (torch, onnxruntime and their libraries).
ENGINE_BYTES = 4 << 30
# Weights, gradients, momentum and the baseline copy.
MODEL_COPIES = 4
# Activations and their gradients during the backward pass.
TRAINING_COPIES = 2
EVALUATION_BATCH = MAX_BATCH  # what a GPU evaluates at; a CPU batch is smaller (core.measure.evaluation_batch)


class JobTooLarge(InputError):
    """The job's estimated memory need is past the worker's budget (SQUEEZER_JOB_MEMORY_BYTES)."""

    code = "job_too_large"


@dataclasses.dataclass(frozen=True)
class ActivationProfile:
    """One sample's activations, in elements: every leaf's output summed, and the largest input + output of one leaf."""

    total_elements: int
    peak_elements: int
    parameters: int


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
    bytes: int
    stage: str  # "evaluation" or "training"
    batch: int
    setting: str  # the option that sets the batch


def _elements(value: object) -> int:
    if torch.is_tensor(value):
        return value.numel()
    if isinstance(value, list | tuple):
        return sum(_elements(item) for item in value)
    return 0


def profile(module: nn.Module, sample: torch.Tensor) -> ActivationProfile:
    """Runs `module` on `sample` (one sample, batch dimension included) and measures its activations."""
    total = peak = 0

    def measure(_module: nn.Module, inputs: tuple, output: object) -> None:
        nonlocal total, peak
        produced = _elements(output)
        total += produced
        peak = max(peak, produced + _elements(inputs))

    leaves = [m for m in module.modules() if not list(m.children())]
    hooks = [leaf.register_forward_hook(measure) for leaf in leaves]
    try:
        with torch.no_grad():
            module.eval()(sample[:1])
    finally:
        for hook in hooks:
            hook.remove()
    return ActivationProfile(total, peak, sum(p.numel() for p in module.parameters()))


def training_settings(config: CompressConfig) -> dict[str, StructuredTraining]:
    """The training settings the job's method trains with, by option name (auto: its structural stages and lwct)."""
    names = [config.method] if config.method != MethodName.AUTO else [MethodName.LWCT, *config.auto.structural]
    return {name: getattr(config, name) for name in names if method(name).trains}


def estimate(
    activations: ActivationProfile, config: CompressConfig, *, train_samples: int, val_samples: int
) -> MemoryEstimate:
    """The largest need of the job's evaluation and training, each at the batch it will use (never more samples than
    the data has)."""
    fixed = ENGINE_BYTES + MODEL_COPIES * FLOAT_BYTES * activations.parameters
    evaluation_batch = min(EVALUATION_BATCH, val_samples)
    stages = [
        MemoryEstimate(
            fixed + evaluation_batch * activations.peak_elements * FLOAT_BYTES,
            "evaluation",
            evaluation_batch,
            "",
        )
    ]
    for name, settings in training_settings(config).items():
        batch = min(settings.batch_size, train_samples, settings.max_train_samples or train_samples)
        need = fixed + batch * TRAINING_COPIES * activations.total_elements * FLOAT_BYTES
        stages.append(MemoryEstimate(need, "training", batch, f"options.{name}.batch_size"))
    return max(stages, key=lambda stage: stage.bytes)


def check_fits(
    module: nn.Module, sample: torch.Tensor, config: CompressConfig, *, train_samples: int, val_samples: int
) -> MemoryEstimate:
    """The job's estimate; raises JobTooLarge, naming the setting that raises the budget (and the batch option that
    lowers the need, when training sets it), when it is past core.limits' job_memory_bytes."""
    need = estimate(profile(module, sample), config, train_samples=train_samples, val_samples=val_samples)
    budget = limits.current().job_memory_bytes
    if need.bytes > budget:
        lower = f"; or lower {need.setting}" if need.setting else ""
        raise JobTooLarge(
            f"the job needs about {_gib(need.bytes)} on a worker ({need.stage} at batch {need.batch}, from one "
            f"sample's activations); the limit is {_gib(budget)} (raise {limits.SETTING_NAMES['job_memory_bytes']} "
            f"if it is meant to fit{lower})"
        )
    return need


def _gib(count: int) -> str:
    return f"{count / 2**30:.1f} GiB ({count:,} bytes)" if count >= 2**30 else f"{math.ceil(count / 2**20)} MiB"
