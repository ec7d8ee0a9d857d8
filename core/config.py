"""Typed configuration shared by the engine, the CLI and the API schema: one definition documents all three."""

from enum import StrEnum
from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, WithJsonSchema, model_validator

from squeezer.core.errors import InputError
from squeezer.core.methods.registry import MethodName, check_complete, method, register_method, structural_names

# Upper bounds of every option: a job may ask for a lot but not for everything (a 3,000-level grid, a billion epochs),
# and each bound is stated in the option's description (bounded) so the documented range is the enforced one.
MAX_EPOCHS = 1_000
MAX_STEPS = 1_000_000
MAX_BATCH_SIZE = 16_384
MAX_SAMPLES = 100_000_000
MAX_GRID_LEVELS = 64
MAX_CHANNELS = 1_024
MAX_LAYERS = 10_000
MAX_REFINEMENTS = 20
MAX_LR = 10.0
MAX_PENALTY = 100.0
MAX_CALIBRATION_SAMPLES = 100_000
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
MAX_TIME_LIMIT_S = 30 * 24 * 3600.0
MAX_SPEEDUP = 100.0
MAX_LATENCY_MS = 3_600_000.0
MAX_TARGET_THREADS = 256
MAX_TARGET_BATCH = 1_024
_BOUND_WORDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


def _number(value: float) -> str:
    return f"{int(value):,}" if float(value).is_integer() else f"{value:,}"


def _bounds_text(constraints: dict[str, Any], unit: str = "item") -> str:
    words = [f"{_BOUND_WORDS[key]} {_number(value)}" for key, value in constraints.items() if key in _BOUND_WORDS]
    for key, word in (("min_length", "at least"), ("max_length", "at most")):
        if key in constraints:
            count = constraints[key]
            words.append(f"{word} {count:,} {unit}{'s' if count != 1 else ''}")
    return ", ".join(words)


def bounded(
    default: Any = ...,
    description: str = "",
    *,
    each: dict[str, Any] | None = None,
    unit: str = "item",
    **constraints: Any,
) -> Any:
    """A Field whose description ends with its bounds (and its items' bounds, `each`, which the item type enforces);
    lengths count `unit`s (a list's items, a string's characters). A list's default comes as `default_factory`."""
    text = f"Bounds: {_bounds_text(constraints, unit)}" + (f"; each item {_bounds_text(each)}" if each else "") + "."
    default_args = () if "default_factory" in constraints else (default,)
    return Field(*default_args, description=f"{description} {text}".strip(), **constraints)


# The bounds of list items, enforced by the item type and stated by `bounded(each=...)`.
SPARSITY_ITEM = {"ge": 0, "lt": 1}
LEVEL_ITEM = {"ge": 0, "le": 1}
PENALTY_ITEM = {"ge": 0, "le": MAX_PENALTY}
NORMALIZATION_ITEM = {"ge": -1e6, "le": 1e6}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class DropType(StrEnum):
    ABSOLUTE = "absolute"  # percentage points
    RELATIVE = "relative"  # percent of the baseline


class AccuracyTarget(_Strict):
    """How much quality the user will trade for size. Accuracies are in percent (0-100)."""

    max_drop: float = bounded(
        1.0,
        ge=0,
        le=100,
        description="Largest allowed drop, in percentage points (absolute) or percent of the baseline (relative).",
    )
    drop_type: DropType = DropType.ABSOLUTE
    metric: Literal["top1", "pixel_accuracy", "miou", "iou"] | None = Field(
        None, description="What the drop is measured in; unset: the task's first metric (top1, pixel_accuracy)."
    )

    def allowed_drop(self, baseline_accuracy: float) -> float:
        """The budget in absolute percentage points."""
        if self.drop_type == DropType.RELATIVE:
            return baseline_accuracy * self.max_drop / 100.0
        return self.max_drop


TargetRuntime = Literal["onnxruntime-cpu", "onnxruntime-cuda"]


class SpeedTarget(_Strict):
    """How much faster the result must run where it is deployed, beside the accuracy budget: measured on model.onnx
    against the baseline's ONNX, A/B interleaved on the target runtime (core.measure.compare). With a goal, auto
    ranks its candidates by that speed-up (objective latency); every report says whether the goal was met."""

    speedup: float | None = bounded(
        None, "Speed-up over the baseline to reach (baseline time / result time); unset: none.", gt=1, le=MAX_SPEEDUP
    )
    latency_ms: float | None = bounded(
        None, "Latency of one batch to reach, in milliseconds; unset: none.", gt=0, le=MAX_LATENCY_MS
    )
    runtime: TargetRuntime = Field(
        "onnxruntime-cpu",
        description="Where speed is measured: onnxruntime on CPU, or on CUDA (a worker with a GPU and onnxruntime-gpu;"
        " a job asking for it elsewhere fails with runtime_unavailable).",
    )
    threads: int = bounded(1, "Intra-op threads of the target runtime.", ge=1, le=MAX_TARGET_THREADS)
    batch: int = bounded(1, "Batch size the goal is measured at.", ge=1, le=MAX_TARGET_BATCH)

    @model_validator(mode="after")
    def _one_goal(self) -> "SpeedTarget":
        if self.speedup is not None and self.latency_ms is not None:
            raise ValueError("give speedup or latency_ms, not both")
        return self

    @property
    def has_goal(self) -> bool:
        return self.speedup is not None or self.latency_ms is not None


class Normalization(_Strict):
    """Per-channel (x - mean) / std applied to inputs after scaling; saved beside the model."""

    mean: list[Annotated[float, Field(**NORMALIZATION_ITEM)]] = bounded(
        description="Per-channel mean.", min_length=1, max_length=MAX_CHANNELS, each=NORMALIZATION_ITEM
    )
    std: list[Annotated[float, Field(**NORMALIZATION_ITEM)]] = bounded(
        description="Per-channel standard deviation (positive).",
        min_length=1,
        max_length=MAX_CHANNELS,
        each=NORMALIZATION_ITEM,
    )


class StructuredTraining(_Strict):
    """Training settings every method shares: how long and how fast each recovery stage trains."""

    epochs_per_step: int = bounded(2, "Fine-tuning epochs after each compression step.", ge=0, le=MAX_EPOCHS)
    min_steps_per_stage: int = bounded(
        300,
        ge=0,
        le=MAX_STEPS,
        description="Each training stage runs at least this many SGD steps, so small data sets get enough updates to "
        "recover; networks over 300k parameters get fewer, as 1/√parameters, at least 60 "
        "(core.train.min_steps).",
    )
    max_stretch_epochs: int | None = bounded(
        None,
        ge=1,
        le=MAX_EPOCHS,
        description="min_steps_per_stage stretches a stage to at most this many passes over the training data "
        "(never below epochs_per_step): on a small data set further steps refit the same samples. Unset: no cap.",
    )
    lr: float = bounded(0.01, "Learning rate, and the ceiling of the range test (lr_search).", gt=0, le=MAX_LR)
    lr_search: bool = Field(
        True,
        description="Before the first training stage, a short range test on the job's own data picks the rate: lr and "
        "0.3, 0.1, 0.03 and 0.01 times it each train a copy of the baseline for up to 20 steps, and the "
        "largest rate whose loss comes within 25 % of the best is used. Off: lr as given. Either way, a "
        "stage whose loss diverges (above 2 × its start + 0.5, or NaN) is rolled back and retried at 0.3 × "
        "the rate, up to 3 times.",
    )
    lr_schedule: Literal["constant", "cosine"] = Field(
        "cosine",
        description="Learning rate within each stage: cosine annealing to zero recovers more accuracy in short stages.",
    )
    augment: Literal["none", "flip", "crop+flip"] = Field(
        "none",
        description="Augmentation of every training batch (off unless asked for): flip mirrors a random half of the "
        "batch left to right; crop+flip also crops each image back from a 4-pixel reflect-padded copy at a "
        "random offset (torchvision's CIFAR recipe). Masks move with their images.",
    )
    momentum: float = bounded(0.9, "SGD momentum.", ge=0, lt=1)
    weight_decay: float = bounded(0.0, "L2 weight decay.", ge=0, le=1)
    batch_size: int = bounded(
        128,
        "Training batch size; the submission check refuses a job whose training batches would not fit a worker's "
        "memory (core.memory_budget).",
        ge=1,
        le=MAX_BATCH_SIZE,
    )
    max_train_samples: int | None = bounded(
        None, "Cap on training samples per epoch (for quick runs).", ge=1, le=MAX_SAMPLES
    )
    distill: float = bounded(
        0.5,
        ge=0,
        le=1,
        description="Weight of knowledge distillation from the baseline in every training stage (0: labels only): a "
        "compressed model recovers faster when it learns the baseline's full output.",
    )


@register_method(
    MethodName.LWCT,
    "squeezer.core.methods.lwct:compress_lwct",
    "layer-wise compressive training (pruning, then layers constrained to few weight values)",
)
class LwctConfig(StructuredTraining):
    """Layer-wise compressive training (docs/METHODS.md §1). Defaults work without tuning: chosen across LeNet-5 on
    Fashion-MNIST and digits, ResNet-20 on Fashion-MNIST and an ONNX CNN (bench/lwct_defaults.py)."""

    epochs_per_step: int = bounded(3, "Fine-tuning epochs after each compression step.", ge=0, le=MAX_EPOCHS)
    lr: float = bounded(0.05, "Learning rate, and the ceiling of the range test (lr_search).", gt=0, le=MAX_LR)
    sparsity: float | None = bounded(
        None, "Network-wide pruning sparsity; None searches the largest one within the budget.", ge=0, lt=1
    )
    sparsity_grid: list[Annotated[float, Field(**SPARSITY_ITEM)]] = bounded(
        description="Sparsity levels the search tries, in increasing order.",
        default_factory=lambda: [0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97],
        min_length=1,
        max_length=MAX_GRID_LEVELS,
        each=SPARSITY_ITEM,
    )
    ranking: Literal["sparsity", "sensitivity", "size"] = "sparsity"
    on_violation: Literal["stop", "skip"] = "skip"
    preserve: int = bounded(0, "Number of most significant layers always kept in float.", ge=0, le=MAX_LAYERS)
    prune_epochs: int = bounded(3, "Fine-tuning epochs of each pruning level.", ge=0, le=MAX_EPOCHS)
    float_precision: Literal["float32", "float16", "int8"] = Field(
        "int8",
        description="Precision of the weights that stay in floating point (layers not σ-constrained): float16, or int8 "
        "codes with one float32 scale per layer (Rice-coded in model.sqz); their layers' biases are stored "
        "in float16 unless float32, normalisation stays float32. Every accuracy, the budget test included, "
        "is measured with the rounded weights.",
    )
    walk: Literal["group", "layer"] = Field(
        "group",
        description="How the σ-constraining walk steps along the ranking. layer (the paper): one more layer per "
        "training stage. group: the next group of layers at once, the group doubled after a step within "
        "the budget and halved after one past it (a layer that fails alone stays float), so a network "
        "whose layers mostly pass needs about log2(layers) stages.",
    )
    group_training: Literal["sqrt", "linear", "paced"] = Field(
        "paced",
        description="How long a stage of walk=group trains for a group of n layers, in single-layer stages "
        "(epochs_per_step, stretched to min_steps_per_stage). paced: up to n rounds of one, stopping after "
        "the first that keeps the stage within its share of the unspent budget (n layers' share of the "
        "layers left; accepted, as always, if within the whole budget). linear n (each layer gets the "
        "training the layer walk gives it), sqrt √n (rounded up). A large group needs more than one stage's "
        "training to recover; paced trained the walk in 0.62x linear's CPU time on ResNet-20, 0.40x on ResNet-56, "
        "0.31x on ResNet-110 (bench/lwct_scaling.py).",
    )
    prune_budget_share: float = bounded(
        0.5,
        gt=0,
        le=1,
        description="Share of the accuracy budget the sparsity search may spend; the rest is left for σ-constrained "
        "layers, which save far more bytes per point of accuracy than the last pruning levels.",
    )
    grid_search: bool = Field(
        True,
        description="After the walk, each layer still float with float_precision int8 tries coarser "
        "integer grids, int4 then int5, int6, int7, and keeps the first whose accuracy stays within the budget; "
        "then the biases (float16) try int4 … int8 together, one grid for all. Evaluation only, no training stage; "
        "fewer levels mean shorter Rice codes in model.sqz.",
    )

    @model_validator(mode="before")
    @classmethod
    def _retired_options(cls, data: Any) -> Any:
        """Options whose experiment lost are gone: asking for what they did is refused by name, and their default
        (which a stored dump of a config still holds) changes nothing and is dropped."""
        if not isinstance(data, dict):
            return data
        if data.get("tighten") not in (None, False):
            raise ValueError("option lwct.tighten was removed (it gained nothing on the default workloads); omit it")
        if data.get("group_training") == "fixed":
            raise ValueError("lwct.group_training=fixed was removed; use paced (the default), linear or sqrt")
        return {key: value for key, value in data.items() if key != "tighten"}


class LevelSearch(StructuredTraining):
    """A search for the largest compression level within the budget (filter levels, group λ)."""

    refinements: int = bounded(
        2,
        ge=0,
        le=MAX_REFINEMENTS,
        description="Bisection steps between the last level within the budget and the first one past it, so the search "
        "ends close to the budget's edge rather than a whole grid step below it. With filter.latency: the steps past "
        "the budget the walk goes on after, each halving its step (in log).",
    )


GateInit = Literal["ones", "uniform", "normal", "l1"]
SPEEDUP_ITEM = {"gt": 1, "le": 100}


class LatencyPruning(_Strict):
    """Latency-aware pruning in place of filter's level search (core.methods.latency_pruning): residual blocks and
    channels removed against a latency table measured in onnxruntime on CPU, for each speed-up target in turn."""

    speedups: list[Annotated[float, Field(**SPEEDUP_ITEM)]] = bounded(
        default_factory=lambda: [1.5, 2.0, 3.0, 4.0, 6.0],
        min_length=1,
        max_length=MAX_GRID_LEVELS,
        each=SPEEDUP_ITEM,
        description="Speed-ups over the baseline tried in increasing order, each plan timed on the target runtime "
        "and made again (up to three plans) while it misses by over 10 %; the fastest result within the budget is "
        "kept.",
    )
    depth: bool = Field(True, description="Remove whole identity-shortcut residual blocks first.")
    gradual: bool = Field(
        True,
        description="Plan each target from the last result within the budget (recovered), so each step removes "
        "only what separates the two targets; off: plan every target from the baseline in one step.",
    )
    max_step: float = bounded(
        1.5,
        "Most one gradual step aims to speed up over where it starts: a target further away is reached through "
        "steps this size, so a step that lands short of its target does not make the next one larger.",
        ge=1.2,
        le=100,
    )
    block_drop: float = bounded(
        5.0, "Points a residual block's removal may cost before recovery (measured per block).", ge=0, le=100
    )
    min_keep: float = bounded(
        0.25, "Share of each channel group's channels in the input model always kept, over all steps.", gt=0, le=1
    )
    step_keep: float = bounded(
        0.5,
        "Share of each channel group's channels one step always keeps: a step thins many groups a little.",
        ge=0,
        le=1,
    )
    recovery_scale: float = bounded(
        2.0, "Recovery trains 1 + this × the share of parameters removed times epochs_per_step.", ge=0, le=100
    )


@register_method(
    MethodName.FILTER,
    "squeezer.core.methods.filter:compress_filter",
    "filter pruning (removes the channels of least learned importance)",
    structural=True,
)
class FilterConfig(LevelSearch):
    """Importance-weight filter pruning (docs/METHODS.md §2)."""

    init: list[GateInit] = bounded(
        default_factory=lambda: list[GateInit](["ones", "l1"]),
        min_length=1,
        max_length=len(get_args(GateInit)),
        description="Initialisations of the importance weights; with several, filter scores are combined by mean rank.",
    )
    penalty: float = bounded(1.0, "L1 weight λ on the importance weights while they are learned.", ge=0, le=MAX_PENALTY)
    importance_epochs: int = bounded(
        2, "Epochs of training the importance weights per initialisation.", ge=0, le=MAX_EPOCHS
    )
    levels: list[Annotated[float, Field(**LEVEL_ITEM)]] = bounded(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        description="Global pruning levels (share of removable channels) tried in increasing order.",
        min_length=1,
        max_length=MAX_GRID_LEVELS,
        each=LEVEL_ITEM,
    )
    latency: LatencyPruning | None = Field(
        None, description="Set: prune for speed on the target runtime instead of by learned importance levels."
    )


@register_method(
    MethodName.GROUP,
    "squeezer.core.methods.group:compress_group",
    "group-sparsity neuron removal (removes the channels group-lasso training zeroes)",
    structural=True,
)
class GroupConfig(LevelSearch):
    """Group-sparsity neuron removal (docs/METHODS.md §3)."""

    penalties: list[Annotated[float, Field(**PENALTY_ITEM)]] = bounded(
        default_factory=lambda: [0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0],
        min_length=1,
        max_length=MAX_GRID_LEVELS,
        each=PENALTY_ITEM,
        description="Group-lasso weights λ tried in increasing order; the largest within the budget is kept.",
    )
    sparse_epochs: int = bounded(4, "Epochs of group-sparse training per λ.", ge=1, le=MAX_EPOCHS)


class Int8Layers(StrEnum):
    """Which layers the int8 method quantizes."""

    ALL = "all"  # every convolution and fully connected layer: the smallest file
    FASTER = "faster"  # only those int8 runs measurably faster on the speed target; the others stay float
    AUTO = "auto"  # faster under a latency objective, else all


@register_method(
    MethodName.INT8,
    "squeezer.core.methods.int8:compress_int8",
    "weights and activations quantized to int8, calibrated on the training data",
)
class Int8Config(_Strict):
    """int8 post-training quantization of weights and activations (onnxruntime QDQ; docs/METHODS.md, "Deployable
    artifacts and int8")."""

    calibration_samples: int = bounded(
        256, "Training samples whose activation ranges set the int8 scales.", ge=1, le=MAX_CALIBRATION_SAMPLES
    )
    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="How onnxruntime turns the observed activations into ranges."
    )
    per_channel: bool = Field(True, description="One weight scale per output channel (else one per tensor).")
    layers: Int8Layers = Field(
        Int8Layers.AUTO,
        description="Which layers become int8: all; only those measured faster in int8 on the speed target's "
        "runtime (each layer timed float against int8, A/B; small layers int8 slows down stay float); or auto, "
        "which is faster under a latency objective (a speed goal, or auto.objective latency) and all otherwise.",
    )


def _structural(name: Any) -> Any:
    """Only a method that removes channels can run before lwct."""
    allowed = structural_names()
    if name not in allowed:
        raise ValueError(f"Input should be {' or '.join(repr(str(n)) for n in allowed)}")
    return name


StructuralMethod = Annotated[
    MethodName,
    BeforeValidator(_structural),
    WithJsonSchema({"type": "string", "enum": [str(name) for name in structural_names()]}),
]


@register_method(
    MethodName.AUTO,
    "squeezer.core.methods.auto:compress_auto",
    "channel removal, then lwct (and int8), under one budget",
    combines=(MethodName.FILTER, MethodName.GROUP, MethodName.LWCT, MethodName.INT8),
)
class AutoConfig(_Strict):
    """Structural removal, then lwct on what remains, under one budget (docs/METHODS.md, "Combining them")."""

    structural: list[StructuralMethod] = bounded(
        default_factory=lambda: [MethodName.FILTER],
        min_length=1,
        max_length=len(structural_names()),
        description="Channel-removing methods run first, in this order, each on the previous one's result.",
    )
    structural_share: float = bounded(
        0.5,
        ge=0,
        le=1,
        description="Share of the allowed drop the structural stages may spend; lwct gets what they leave. Every "
        "stage is measured against the original model's accuracy.",
    )
    compare_lwct_alone: bool = Field(
        True,
        description="Also run lwct alone on the original model, with the whole budget, and return whichever "
        "result within the budget packs smallest: the combination is never worse in size than its "
        "default method alone.",
    )
    int8: bool = Field(
        True,
        description="Last, quantize the channel-removed model to int8 (weights and activations) with what the "
        "structural stages left of the budget (int8 kernels are what make a model.onnx faster in onnxruntime).",
    )
    objective: Literal["size", "latency", "balanced"] = Field(
        "size",
        description="Which within-budget candidate is returned: size (smallest file), latency (fastest "
        "model.onnx in onnxruntime at batch 32, CPU) or balanced (smallest product of the two "
        "ratios to the baseline).",
    )


TaskName = Literal["classification", "segmentation"]
# iou: the positive class's IoU, for binary masks (one output channel, thresholded at 0 for logits, 0.5 for a sigmoid).
METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "classification": ("top1",),
    "segmentation": ("pixel_accuracy", "miou", "iou"),
}


class CompressConfig(_Strict):
    """Everything one compression job needs besides the model and the data."""

    method: MethodName = MethodName.LWCT
    task: TaskName = "classification"
    target: AccuracyTarget = Field(default_factory=AccuracyTarget)
    speed_target: SpeedTarget = Field(default_factory=SpeedTarget)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = bounded(0, "Seed of every random choice (shuffling, initialisation).", ge=0, le=MAX_SEED)
    normalization: Normalization | None = None
    lwct: LwctConfig = Field(default_factory=LwctConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    group: GroupConfig = Field(default_factory=GroupConfig)
    auto: AutoConfig = Field(default_factory=AutoConfig)
    int8: Int8Config = Field(default_factory=Int8Config)
    time_limit_s: float | None = bounded(
        None, "Stop training after this many seconds and keep the best result so far.", gt=0, le=MAX_TIME_LIMIT_S
    )

    @property
    def objective(self) -> str:
        """What auto chooses its result by: latency whenever the speed target sets a goal, else `auto.objective`."""
        return "latency" if self.speed_target.has_goal else self.auto.objective

    @property
    def int8_layers(self) -> Int8Layers:
        """The int8 layer choice with auto resolved by the objective."""
        if self.int8.layers != Int8Layers.AUTO:
            return self.int8.layers
        return Int8Layers.FASTER if self.objective == "latency" else Int8Layers.ALL

    @model_validator(mode="after")
    def _metric_fits_task(self) -> "CompressConfig":
        """An unset metric is the task's first one (top1, pixel_accuracy); a metric of another task is refused."""
        allowed = METRICS_BY_TASK[self.task]
        if self.target.metric is None:
            self.target = self.target.model_copy(update={"metric": allowed[0]})
        elif self.target.metric not in allowed:
            raise ValueError(
                f"metric {self.target.metric!r} does not apply to task {self.task!r}; use {' or '.join(allowed)}"
            )
        return self

    @model_validator(mode="after")
    def _options_of_its_method(self) -> "CompressConfig":
        """An option of a method the job does not run would be ignored; it is refused instead, by name. A dump of a
        config carries every method's defaults, so only values other than the default count."""
        reads = method(self.method).reads
        foreign = [
            f"{name}.{option}" for name in MethodName if name not in reads for option in _changed(getattr(self, name))
        ]
        if foreign:
            raise ValueError(
                f"option{'s' if len(foreign) > 1 else ''} {', '.join(foreign)} of another method: method "
                f"{self.method} reads only {', '.join(reads)} options"
            )
        return self

    @property
    def metric(self) -> str:
        """The metric the budget is measured in (the validator has filled an unset one)."""
        assert self.target.metric is not None
        return self.target.metric


def _changed(options: BaseModel) -> list[str]:
    """The options set to something other than their defaults."""
    default = type(options)()
    return [
        name
        for name in type(options).model_fields
        if name in options.model_fields_set and getattr(options, name) != getattr(default, name)
    ]


check_complete(CompressConfig)


def validated_config(fields: dict[str, Any]) -> CompressConfig:
    """A CompressConfig from plain fields (the CLI's flags, the Python API's keywords): what does not validate is an
    InputError `invalid_options` naming each field."""
    try:
        return CompressConfig.model_validate(fields)
    except ValidationError as error:
        problems = "; ".join(_problem(e) for e in error.errors(include_url=False))
        raise InputError(f"invalid options: {problems}", code="invalid_options") from None


def _problem(error: Any) -> str:
    """One validation error as "where: what"; an error across options (a rule of the config) has no "where"."""
    message = str(error.get("ctx", {}).get("error", error["msg"]))
    return f"{'.'.join(map(str, error['loc']))}: {message}" if error["loc"] else message
