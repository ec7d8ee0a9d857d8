"""What a report states about a model: accuracy, size and work (MACs), each measured the same way for the baseline
and the compressed model; latency is compared A/B (core.measure.compare)."""

from collections.abc import Callable

import torch
from torch import nn

from squeezer.core.errors import InputError
from squeezer.core.events import StopCheck, stop_point
from squeezer.core.graph.dependency import TRANSPOSED, Convolution


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is the user's error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA device is available", code="device_unavailable")
    return torch.device(name)


def classes_of(output: torch.Tensor, threshold: float = 0.0) -> torch.Tensor:
    """Class predictions from model outputs: argmax over dim 1, or with one output channel (binary segmentation)
    output > threshold: 0 for logits, 0.5 after a terminal sigmoid (`binary_threshold`)."""
    return output.argmax(1) if output.shape[1] > 1 else (output[:, 0] > threshold).long()


def binary_threshold(module: nn.Module) -> float:
    """0.5 for a model whose output passes a terminal sigmoid, 0 for one that outputs logits."""
    from squeezer.core.train import terminal_head

    name = terminal_head(module, per_sample=False)
    return 0.5 if name is not None and isinstance(module.get_submodule(name), nn.Sigmoid) else 0.0


# On a CPU, a batch whose activations outgrow the caches evaluates several times slower: on one thread, batch 8
# against 512 ran MobileNetV3-Small at 224×224 4.9× as fast, batch 32 ResNet-56 at 32×32 1.9× (onnxruntime: 2.0×
# and 1.0×). So a CPU batch holds at most this many float32 elements of its largest activation; a GPU takes MAX_BATCH.
CPU_BATCH_ELEMENTS = 2**20
MAX_BATCH = 512


def evaluation_batch(per_sample_elements: int, device: torch.device | str = "cpu") -> int:
    """Samples per evaluation batch for a model whose largest activation (or input) has `per_sample_elements`."""
    if torch.device(device).type != "cpu":
        return MAX_BATCH
    return max(1, min(MAX_BATCH, CPU_BATCH_ELEMENTS // max(per_sample_elements, 1)))


def largest_activation(module: nn.Module, sample: torch.Tensor) -> int:
    """Elements of the largest tensor any leaf module outputs for `sample` (one sample, batch axis included)."""
    largest = sample.numel()

    def record(_module, _inputs, output) -> None:
        nonlocal largest
        for tensor in output if isinstance(output, tuple | list) else (output,):
            if torch.is_tensor(tensor):
                largest = max(largest, tensor.numel())

    hooks = [leaf.register_forward_hook(record) for leaf in module.modules() if not list(leaf.children())]
    try:
        module(sample)
    finally:
        for hook in hooks:
            hook.remove()
    return largest


@torch.no_grad()
def predict(
    module: nn.Module,
    x: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
    should_stop: StopCheck | None = None,
) -> torch.Tensor:
    """Class predictions (`classes_of`) for every sample, batched (by default `evaluation_batch` of the module's
    largest activation), each batch after a `should_stop` check; the module is left in eval mode."""
    module.to(device).eval()
    threshold = binary_threshold(module)
    if batch_size is None:
        probe = largest_activation(module, x[:1].to(device)) if len(x) and torch.device(device).type == "cpu" else 0
        batch_size = evaluation_batch(probe, device)
    outputs = []
    for start in range(0, len(x), batch_size):
        stop_point(should_stop)
        outputs.append(classes_of(module(x[start : start + batch_size].to(device)), threshold).cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, dtype=torch.long)


def top1_accuracy(
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    device: torch.device | str = "cpu",
    batch_size: int | None = None,
) -> float:
    """Top-1 accuracy in percent."""
    return score_predictions("top1", predict(module, x, device=device, batch_size=batch_size), y)


def share_correct(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of predictions equal to their label: top-1 over (N,) labels, pixel accuracy over (N, H, W) masks."""
    if labels.numel() == 0:
        return 0.0
    return 100.0 * (predictions == labels).float().mean().item()


def miou(predictions: torch.Tensor, masks: torch.Tensor) -> float:
    """Mean intersection over union in percent: per class |pred ∩ true| / |pred ∪ true| over every pixel of the
    split, averaged over the classes present in the predictions or the masks (a class absent from both has no IoU)."""
    predictions, masks = predictions.flatten().long(), masks.flatten().long()
    if masks.numel() == 0:
        return 0.0
    classes = int(max(predictions.max(), masks.max())) + 1
    confusion = torch.bincount(masks * classes + predictions, minlength=classes * classes).view(classes, classes)
    intersection = confusion.diagonal().double()
    union = confusion.sum(0).double() + confusion.sum(1).double() - intersection
    present = union > 0
    return 100.0 * (intersection[present] / union[present]).mean().item()


def positive_iou(predictions: torch.Tensor, masks: torch.Tensor) -> float:
    """IoU of the positive class in percent (binary masks: any non-zero index is positive), over every pixel."""
    predicted, true = predictions.flatten() > 0, masks.flatten() > 0
    union = int((predicted | true).sum())
    return 100.0 * int((predicted & true).sum()) / union if union else 100.0


_SCORES = {"top1": share_correct, "pixel_accuracy": share_correct, "miou": miou, "iou": positive_iou}


def score_predictions(metric: str, predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """`metric` (top1, pixel_accuracy, miou) of class predictions against labels or masks of the same shape."""
    return _SCORES[metric](predictions.cpu(), labels.cpu())


MetricFunction = Callable[..., float]  # (module, x, y, *, device, should_stop) -> percent


def metric_function(metric: str) -> MetricFunction:
    """The one evaluation every method and the report use for `metric` (the task picks which metrics apply)."""
    if metric not in _SCORES:
        raise InputError(f"unknown metric {metric!r}; known: {', '.join(_SCORES)}", code="invalid_options")

    def evaluate(
        module: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        device: torch.device | str = "cpu",
        batch_size: int | None = None,
        should_stop: StopCheck | None = None,
    ) -> float:
        predictions = predict(module, x, device=device, batch_size=batch_size, should_stop=should_stop)
        return score_predictions(metric, predictions, y)

    evaluate.__name__ = metric
    return evaluate


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_nonzero(module: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in module.parameters())


def float32_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer stored as float32: what an uncompressed checkpoint costs."""
    tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
    return 4 * sum(t.numel() for t in tensors)


_MAC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, *TRANSPOSED, nn.Linear)


@torch.no_grad()
def count_macs(module: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one sample's forward pass through convolution and linear layers (the work that
    dominates CNNs; element-wise ops are left out, as in the literature's FLOP counts). Zeroed weights still count:
    only removing channels makes a dense kernel do less."""
    total = 0

    def hook(layer, inputs, output):
        nonlocal total
        if isinstance(layer, nn.Linear):
            total += output.numel() * layer.in_features
        elif isinstance(layer, TRANSPOSED):
            total += inputs[0][0].numel() * layer.out_channels // layer.groups * _kernel_volume(layer)
        else:
            total += output[0].numel() * (layer.in_channels // layer.groups) * _kernel_volume(layer)

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, _MAC_LAYERS)]
    try:
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        was_training = module.training
        module.eval()(torch.zeros(1, *input_shape, device=device))
        module.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    return int(total)


def _kernel_volume(layer: Convolution) -> int:
    volume = 1
    for size in layer.kernel_size:
        volume *= size
    return volume
