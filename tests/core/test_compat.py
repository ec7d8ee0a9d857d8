"""The compatibility table of the methods (issue 12): torchvision's production architectures (random weights, 32×32
inputs) under lwct, filter and group, on a quick run without training. Each cell says whether the method works, the
MACs it removed, or why it was refused; the compressed model must run and keep its output shape, and filter must
remove channels wherever the channel graph allows any. The cells that take seconds run in CI; the four largest
networks (a minute or more per cell on two CPU cores: the walk packs a .sqz per trial) run when
SQUEEZER_COMPAT_METHODS=1. The run writes readme-compat-methods.md; the channel graph's own table
(tests/core/graph/test_production_graphs.py) always runs."""

import os
import time
from pathlib import Path

import pytest
import torch
from torchvision import models

from squeezer.core.config import AccuracyTarget, CompressConfig, FilterConfig, GroupConfig, LwctConfig
from squeezer.core.errors import InputError
from squeezer.core.intake.data import Dataset
from squeezer.core.intake.models import LoadedModel
from squeezer.core.measure import count_macs
from squeezer.core.methods.filter import compress_filter
from squeezer.core.methods.group import compress_group
from squeezer.core.methods.lwct import compress_lwct

_LARGE = pytest.mark.skipif(not os.environ.get("SQUEEZER_COMPAT_METHODS"), reason="set SQUEEZER_COMPAT_METHODS=1")
ARCHITECTURES = [
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_x_400mf",
    "shufflenet_v2_x0_5",
    *(pytest.param(arch, marks=_LARGE) for arch in ("resnet18", "resnet50", "densenet121", "convnext_tiny")),
]
# LayerNorm over channels (channels-last): removing one channel changes the others, so the graph keeps every layer.
NO_REMOVABLE_CHANNELS = {"convnext_tiny"}
SIZE = 32
COMPAT_TABLE = Path(os.environ.get("SQUEEZER_COMPAT_TABLE", "/tmp/sq/readme-compat.md")).with_name(
    "readme-compat-methods.md"
)
NO_TRAINING = {"epochs_per_step": 0, "min_steps_per_stage": 0, "lr_search": False}
OPTIONS = {
    "lwct": LwctConfig(sparsity=0.5, prune_epochs=0, **NO_TRAINING),
    "filter": FilterConfig(init=["l1"], importance_epochs=0, levels=[0.3], refinements=0, **NO_TRAINING),
    "group": GroupConfig(penalties=[30.0], sparse_epochs=1, max_train_samples=16, refinements=0, **NO_TRAINING),
}
CONFIGS = {
    method: CompressConfig(method=method, device="cpu", target=AccuracyTarget(max_drop=100), **{method: options})
    for method, options in OPTIONS.items()
}
METHODS = {"lwct": compress_lwct, "filter": compress_filter, "group": compress_group}
_rows: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="module")
def data():
    generator = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 3, SIZE, SIZE, generator=generator), torch.arange(16) % 10
    return Dataset("random", x, y, x, y, 10)


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if _rows:
        COMPAT_TABLE.parent.mkdir(parents=True, exist_ok=True)
        lines = [
            f"| torchvision model ({SIZE}×{SIZE}, random weights) | " + " | ".join(METHODS) + " |",
            "|---" * (len(METHODS) + 1) + "|",
        ]
        lines += [f"| {arch} | " + " | ".join(_rows[arch].get(m, "") for m in METHODS) + " |" for arch in _rows]
        COMPAT_TABLE.write_text("\n".join(lines) + "\n")


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_production_architecture(arch, method, data):
    torch.manual_seed(0)
    args = {"num_classes": 10, "input_size": SIZE}
    module = models.get_model(arch, weights=None, num_classes=10).eval()
    model = LoadedModel(
        module, {"name": f"torchvision:{arch}", "args": args}, "squeezer", (3, SIZE, SIZE), 10, None, None
    )
    before = count_macs(module, (3, SIZE, SIZE))
    started = time.monotonic()
    try:
        result = METHODS[method](model, data, CONFIGS[method])
    except InputError as error:  # a refusal must name its reason; nothing else may escape
        _rows.setdefault(arch, {})[method] = f"refused: {error.message[:80]}"
        return
    with torch.no_grad():
        assert result.module.eval()(data.x_val[:2]).shape == (2, 10)  # the compressed model runs, same output
    removed = 1 - count_macs(result.module, (3, SIZE, SIZE)) / before
    seconds = time.monotonic() - started
    if method == "lwct":
        cell = f"works ({sum(layer.sparsity > 0 for layer in result.layers)} layers pruned)"
    else:
        kept = [layer for layer in result.layers if getattr(layer, "channels_removed", 0) == 0]
        cell = f"works, −{100 * removed:.1f} % MACs" + (f" ({len(kept)} layers kept whole)" if kept else "")
        if method == "filter" and arch in NO_REMOVABLE_CHANNELS:
            assert removed == 0 and all(layer.reason for layer in kept), f"{arch}: kept layers must say why"
            cell = f"works, nothing removable ({kept[0].reason[:90]})"
        elif method == "filter":
            assert removed > 0, f"{arch}: filter removed nothing"
    _rows.setdefault(arch, {})[method] = f"{cell}, {seconds:.0f} s"
