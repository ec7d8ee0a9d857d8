"""Typed configuration shared by the engine, the CLI and the API schema: one definition documents all three."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AccuracyTarget(_Strict):
    """How much quality the user will trade for size. Accuracies are in percent (0-100)."""

    max_drop: float = Field(
        1.0,
        ge=0,
        le=100,
        description="Largest allowed drop, in percentage points (absolute) or percent of the baseline (relative).",
    )
    drop_type: Literal["absolute", "relative"] = "absolute"
    metric: Literal["top1", "pixel_accuracy", "miou", "iou"] | None = Field(
        None, description="What the drop is measured in; unset: the task's first metric (top1, pixel_accuracy)."
    )

    def allowed_drop(self, baseline_accuracy: float) -> float:
        """The budget in absolute percentage points."""
        if self.drop_type == "relative":
            return baseline_accuracy * self.max_drop / 100.0
        return self.max_drop


class Normalization(_Strict):
    """Per-channel (x - mean) / std applied to inputs after scaling; saved beside the model."""

    mean: list[float]
    std: list[float]


class StructuredTraining(_Strict):
    """Training settings every method shares: how long and how fast each recovery stage trains."""

    epochs_per_step: int = Field(2, ge=0, description="Fine-tuning epochs after each compression step.")
    min_steps_per_stage: int = Field(
        300,
        ge=0,
        description="Each training stage runs at least this many SGD steps, so small data sets get enough updates to "
        "recover; networks over 300k parameters get fewer, as 1/√parameters, at least 60 "
        "(core.train.min_steps).",
    )
    max_stretch_epochs: int | None = Field(
        None,
        ge=1,
        description="min_steps_per_stage stretches a stage to at most this many passes over the training data "
        "(never below epochs_per_step): on a small data set further steps refit the same samples. Unset: no cap.",
    )
    lr: float = Field(0.01, gt=0, description="Learning rate, and the ceiling of the range test (lr_search).")
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
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1)
    max_train_samples: int | None = Field(None, ge=1, description="Cap on training samples per epoch (for quick runs).")
    distill: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Weight of knowledge distillation from the baseline in every training stage (0: labels only): a "
        "compressed model recovers faster when it learns the baseline's full output. On the lwct "
        "Fashion-MNIST reference at equal settings the ternary classifier.1 step kept 89.32 % with it, "
        "88.98 % without.",
    )


class LwctConfig(StructuredTraining):
    """Layer-wise compressive training (docs/METHODS.md §1). Defaults work without tuning: chosen across LeNet-5 on
    Fashion-MNIST and digits, ResNet-20 on Fashion-MNIST and an ONNX CNN (bench/lwct_defaults.py)."""

    epochs_per_step: int = Field(3, ge=0, description="Fine-tuning epochs after each compression step.")
    lr: float = Field(0.05, gt=0, description="Learning rate, and the ceiling of the range test (lr_search).")
    sparsity: float | None = Field(
        None, ge=0, lt=1, description="Network-wide pruning sparsity; None searches the largest one within the budget."
    )
    sparsity_grid: list[float] = Field(default_factory=lambda: [0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97])
    ranking: Literal["sparsity", "sensitivity", "size"] = "sparsity"
    on_violation: Literal["stop", "skip"] = "skip"
    preserve: int = Field(0, ge=0, description="Number of most significant layers always kept in float.")
    prune_epochs: int = Field(3, ge=0)
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
    group_training: Literal["fixed", "sqrt", "linear", "paced"] = Field(
        "paced",
        description="How long a stage of walk=group trains for a group of n layers, in single-layer stages "
        "(epochs_per_step, stretched to min_steps_per_stage). paced: up to n rounds of one, stopping after "
        "the first that keeps the stage within its share of the unspent budget (n layers' share of the "
        "layers left; accepted, as always, if within the whole budget). linear n (each layer gets the "
        "training the layer walk gives it), sqrt √n (rounded up), fixed 1. One stage's training for a large "
        "group leaves too little recovery and it fails: ResNet-56 took 47 stages with fixed, 6 with the "
        "others; paced trained the walk in 0.62x linear's CPU time on ResNet-20, 0.40x on ResNet-56, 0.31x "
        "on ResNet-110 (bench/lwct_scaling.py).",
    )
    prune_budget_share: float = Field(
        0.5,
        gt=0,
        le=1,
        description="Share of the accuracy budget the sparsity search may spend; the rest is left for σ-constrained "
        "layers, which save far more bytes per point of accuracy than the last pruning levels.",
    )
    grid_search: bool = Field(
        True,
        description="After the walk (and tightening), each layer still float with float_precision int8 tries coarser "
        "integer grids, int4 then int5, int6, int7, and keeps the first whose accuracy stays within the budget; "
        "then the biases (float16) try int4 … int8 together, one grid for all. Evaluation only, no training stage; "
        "fewer levels mean shorter Rice codes in model.sqz.",
    )
    tighten: bool = Field(
        False,
        description="After the walk, spend the budget it left on sparsity: the next levels of sparsity_grid are tried "
        "on the walked model (σ-constrained layers included), one training stage each, until one breaks the "
        "budget or packs no smaller. Off by default: on three of the four default workloads (ResNet-20 not "
        "measured) it gained nothing and cost one stage (bench/lwct_defaults.py --ablate tighten=false, "
        "measured while it was on).",
    )


class LevelSearch(StructuredTraining):
    """A search for the largest compression level within the budget (filter levels, group λ)."""

    refinements: int = Field(
        2,
        ge=0,
        description="Bisection steps between the last level within the budget and the first one past it, so the search "
        "ends close to the budget's edge rather than a whole grid step below it.",
    )


GateInit = Literal["ones", "uniform", "normal", "l1"]
StructuralMethod = Literal["filter", "group"]


class FilterConfig(LevelSearch):
    """Importance-weight filter pruning (docs/METHODS.md §2)."""

    init: list[GateInit] = Field(
        default_factory=lambda: list[GateInit](["ones", "l1"]),
        min_length=1,
        description="Initialisations of the importance weights; with several, filter scores are combined by mean rank.",
    )
    penalty: float = Field(1.0, ge=0, description="L1 weight λ on the importance weights while they are learned.")
    importance_epochs: int = Field(2, ge=0, description="Epochs of training the importance weights per initialisation.")
    levels: list[float] = Field(
        default_factory=lambda: [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
        description="Global pruning levels (share of removable channels) tried in increasing order.",
    )


class GroupConfig(LevelSearch):
    """Group-sparsity neuron removal (docs/METHODS.md §3)."""

    penalties: list[float] = Field(
        default_factory=lambda: [0.03, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0],
        min_length=1,
        description="Group-lasso weights λ tried in increasing order; the largest within the budget is kept.",
    )
    sparse_epochs: int = Field(4, ge=1, description="Epochs of group-sparse training per λ.")


class Int8Config(_Strict):
    """int8 post-training quantization of weights and activations (onnxruntime QDQ; docs/METHODS.md, "Deployable
    artifacts and int8")."""

    calibration_samples: int = Field(
        256, ge=1, description="Training samples whose activation ranges set the int8 scales."
    )
    calibration: Literal["minmax", "entropy", "percentile"] = Field(
        "minmax", description="How onnxruntime turns the observed activations into ranges."
    )
    per_channel: bool = Field(True, description="One weight scale per output channel (else one per tensor).")


class AutoConfig(_Strict):
    """Structural removal, then lwct on what remains, under one budget (docs/METHODS.md, "Combining them")."""

    structural: list[StructuralMethod] = Field(
        default_factory=lambda: list[StructuralMethod](["filter"]),
        min_length=1,
        description="Channel-removing methods run first, in this order, each on the previous one's result.",
    )
    structural_share: float = Field(
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


MethodName = Literal["lwct", "filter", "group", "auto", "int8"]
TaskName = Literal["classification", "segmentation"]
# iou: the positive class's IoU, for binary masks (one output channel, thresholded at 0 for logits, 0.5 for a sigmoid).
METRICS_BY_TASK: dict[str, tuple[str, ...]] = {
    "classification": ("top1",),
    "segmentation": ("pixel_accuracy", "miou", "iou"),
}


class CompressConfig(_Strict):
    """Everything one compression job needs besides the model and the data."""

    method: MethodName = "lwct"
    task: TaskName = "classification"
    target: AccuracyTarget = Field(default_factory=AccuracyTarget)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    normalization: Normalization | None = None
    lwct: LwctConfig = Field(default_factory=LwctConfig)
    filter: FilterConfig = Field(default_factory=FilterConfig)
    group: GroupConfig = Field(default_factory=GroupConfig)
    auto: AutoConfig = Field(default_factory=AutoConfig)
    int8: Int8Config = Field(default_factory=Int8Config)
    time_limit_s: float | None = Field(
        None, gt=0, description="Stop training after this many seconds and keep the best result so far."
    )

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

    @property
    def metric(self) -> str:
        """The metric the budget is measured in (the validator has filled an unset one)."""
        assert self.target.metric is not None
        return self.target.metric
