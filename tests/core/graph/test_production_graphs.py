"""The channel dependency graph and surgery on production architectures (issue 12): torchvision's networks as torch
modules and as onnx2torch graphs of their ONNX export (squeeze-and-excite gates, hard-swish and SiLU, depthwise and
grouped convolutions, channel shuffle, residual additions and concatenations). Removing every third removable channel
class must give exactly the model with those channels zeroed at their consumers (never pruned wrongly), with fewer
MACs; what cannot be removed says why, per layer. The table goes to TABLE (SQUEEZER_COMPAT_TABLE) for the README."""

import io
import os
from pathlib import Path

import pytest
import torch
from torchvision import models

from squeezer.core.graph import mask_consumers, shrink, trace
from squeezer.core.intake.models import load_model
from squeezer.core.measure import count_macs

ARCHITECTURES = [
    "resnet18",
    "resnet50",
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_x_400mf",
    "densenet121",
    "shufflenet_v2_x0_5",
    "convnext_tiny",
]
AS_ONNX = ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "efficientnet_b0"]
SIZE = 32
TABLE = Path(os.environ.get("SQUEEZER_COMPAT_TABLE", "/tmp/sq/readme-compat.md"))
_rows: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def table():
    yield
    if _rows:
        TABLE.parent.mkdir(parents=True, exist_ok=True)
        header = [
            "| model (32×32) | form | MACs removed (every 3rd channel class) | layers left whole, and why |",
            "|---|---|---|---|",
        ]
        TABLE.write_text("\n".join(header + _rows) + "\n")


def _module(arch: str, form: str, tmp_path: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    module = models.get_model(arch, weights=None, num_classes=10).eval()
    if form == "torch":
        return module
    buffer = io.BytesIO()
    torch.onnx.export(
        module,
        torch.zeros(1, 3, SIZE, SIZE),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
    )
    (tmp_path / "m.onnx").write_bytes(buffer.getvalue())
    return load_model(tmp_path / "m.onnx").module


@pytest.mark.slow
@pytest.mark.parametrize("arch,form", [(a, "torch") for a in ARCHITECTURES] + [(a, "onnx") for a in AS_ONNX])
def test_removal_equals_masking_on_production_architectures(arch, form, tmp_path):
    module = _module(arch, form, tmp_path)
    shape = (3, SIZE, SIZE)
    graph = trace(module, shape)
    removable = graph.removable()
    if not removable:  # refused as a whole: every layer must say why
        assert graph.unsupported and all(graph.why_frozen(name) for name in graph.producers)
        _rows.append(f"| {arch} | {form} | refused | all: {'; '.join(sorted(set(graph.unsupported)))[:200]} |")
        return
    removed = set(removable[::3])
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(1))
    handles = mask_consumers(module, graph, removed)
    with torch.no_grad():
        masked = module(x)
    for handle in handles:
        handle.remove()
    before = count_macs(module, shape)
    shrunk = shrink(module, graph, removed).eval()
    with torch.no_grad():
        actual = shrunk(x)
    assert actual.shape == masked.shape
    assert torch.allclose(actual, masked, atol=1e-4 * max(1.0, float(masked.abs().max())))
    removed_share = 1 - count_macs(shrunk, shape) / before
    assert removed_share > 0
    whole = {name: graph.why_frozen(name) for name in graph.producers if graph.why_frozen(name)}
    reasons = sorted({reason.split(" (")[0] for reason in whole.values()})
    _rows.append(f"| {arch} | {form} | −{100 * removed_share:.1f} % | {len(whole)}: {'; '.join(reasons)[:200]} |")
