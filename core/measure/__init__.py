"""What a report states about a model: accuracy, size, work (MACs) and CPU latency, each measured the same way for
the baseline and the compressed model."""

import statistics
import time

import torch
from torch import nn

from core.errors import InputError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is the user's error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("device 'cuda' requested but no CUDA device is available", code="device_unavailable")
    return torch.device(name)


@torch.no_grad()
def predict(module: nn.Module, x: torch.Tensor, *, device: torch.device | str = "cpu", batch_size: int = 512) -> torch.Tensor:
    """Class predictions (argmax over dim 1) for every sample, batched; the module is left in eval mode."""
    module.to(device).eval()
    outputs = [module(x[start : start + batch_size].to(device)).argmax(1).cpu() for start in range(0, len(x), batch_size)]
    return torch.cat(outputs) if outputs else torch.empty(0, dtype=torch.long)


def top1_accuracy(module: nn.Module, x: torch.Tensor, y: torch.Tensor, *, device: torch.device | str = "cpu",
                  batch_size: int = 512) -> float:
    """Top-1 accuracy in percent."""
    if len(y) == 0:
        return 0.0
    return 100.0 * (predict(module, x, device=device, batch_size=batch_size) == y.cpu()).float().mean().item()


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_nonzero(module: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p)) for p in module.parameters())


def float32_bytes(module: nn.Module) -> int:
    """Bytes of every parameter and buffer stored as float32: what an uncompressed checkpoint costs."""
    tensors = [*module.parameters(), *(b for b in module.buffers() if b.is_floating_point())]
    return 4 * sum(t.numel() for t in tensors)


_MAC_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.Linear)


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
        elif isinstance(layer, nn.ConvTranspose2d):
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


def _kernel_volume(layer: nn.Module) -> int:
    volume = 1
    for size in layer.kernel_size:
        volume *= size
    return volume


@torch.no_grad()
def median_latency_ms(module: nn.Module, input_shape: tuple[int, ...], *, batch: int = 1, repeats: int = 30,
                      warmup: int = 5) -> float:
    """Median wall time of one CPU forward pass at `batch`, in milliseconds, on one thread: multi-threaded timings
    of small models swing by orders of magnitude whenever other processes share the cores."""
    module = module.to("cpu").eval()
    x = torch.randn(batch, *input_shape)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(warmup):
            module(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            module(x)
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return 1000.0 * statistics.median(times)
