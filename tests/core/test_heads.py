"""Output heads as exporters write them (issue 12): a terminal Softmax or LogSoftmax is bypassed while training, so
the loss sees logits, and stays in every exported artifact; one output channel trains with a binary loss."""

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from squeezer.core.config import AccuracyTarget, CompressConfig, FilterConfig, LwctConfig
from squeezer.core.intake.data import load_dataset
from squeezer.core.intake.models import load_model
from squeezer.core.pipeline import ModelSource, compress_files
from squeezer.core.train import fit, logits_only, task_loss, terminal_head
from tests.core.onnx_patterns import Pattern, build, trained_weights

pytestmark = pytest.mark.slow  # trains models: in the full suite, not the fast tier


@pytest.fixture(scope="module")
def weights():
    return trained_weights()


@pytest.mark.parametrize("head", ["Softmax", "LogSoftmax"])
def test_a_terminal_softmax_is_found_and_bypassed_only_while_training(weights, head, tmp_path):
    (tmp_path / "m.onnx").write_bytes(build(weights, Pattern(softmax=head, opset=11)))
    module = load_model(tmp_path / "m.onnx").module
    name = terminal_head(module)
    assert name is not None
    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        with logits_only(module):
            logits = module(x)
        outputs = module(x)
    expected = logits.softmax(1) if head == "Softmax" else logits.log_softmax(1)
    assert torch.allclose(outputs, expected, atol=1e-5)  # the head is back, and what it wrapped were the logits
    seen = []
    data = load_dataset("sample:digits")
    fit(
        module,
        data.x_train,
        data.y_train,
        epochs=1,
        lr=0.01,
        max_samples=256,
        after_step=lambda _: seen.append(isinstance(module.get_submodule(name), nn.Identity)),
    )
    assert seen and all(seen) and not isinstance(module.get_submodule(name), nn.Identity)


def test_sequential_heads_and_non_class_softmax():
    assert terminal_head(nn.Sequential(nn.Linear(4, 3), nn.Softmax(dim=1))) == "1"
    assert terminal_head(nn.Sequential(nn.Conv2d(1, 3, 1), nn.Softmax(dim=-1)), per_sample=False) is None
    assert terminal_head(nn.Sequential(nn.Linear(4, 3), nn.ReLU())) is None


def own_options(method: str, *, min_steps: int) -> dict:
    """Quick options of `method` alone: a config refuses another method's options."""
    if method == "lwct":
        return {
            "lwct": LwctConfig(sparsity_grid=[0.5], prune_epochs=1, epochs_per_step=0, min_steps_per_stage=min_steps)
        }
    return {
        "filter": FilterConfig(
            init=["l1"],
            importance_epochs=1,
            epochs_per_step=1,
            min_steps_per_stage=min_steps,
            levels=[0.3],
            refinements=0,
        )
    }


@pytest.mark.parametrize("method", ["lwct", "filter"])
def test_a_softmax_classifier_compresses_and_keeps_its_head(weights, method, tmp_path):
    (tmp_path / "m.onnx").write_bytes(build(weights, Pattern(softmax="Softmax")))
    config = CompressConfig(
        method=method,
        device="cpu",
        target=AccuracyTarget(max_drop=3),
        **own_options(method, min_steps=30),
    )
    report = compress_files(ModelSource(tmp_path / "m.onnx"), "sample:digits", tmp_path / "out", config)
    assert report["target_met"] and report["baseline"]["accuracy"] > 80
    exported = onnx.load(tmp_path / "out" / "model.onnx")
    assert exported.graph.node[-1].op_type == "Softmax" or "Softmax" in {n.op_type for n in exported.graph.node}
    session = ort.InferenceSession(str(tmp_path / "out" / "model.onnx"))
    probabilities = session.run(None, {session.get_inputs()[0].name: np.random.rand(3, 1, 8, 8).astype(np.float32)})[0]
    assert np.allclose(probabilities.sum(1), 1.0, atol=1e-4)  # outputs still mean probabilities
    reloaded = load_model(tmp_path / "out" / "model")
    assert terminal_head(reloaded.module) is not None


def test_one_output_channel_trains_with_a_binary_loss():
    logits = torch.tensor([[[[2.0, -2.0]]]])
    masks = torch.tensor([[[1, 0]]])
    assert task_loss(logits, masks).item() == pytest.approx(float(nn.functional.softplus(torch.tensor(-2.0))))
    module = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Sigmoid())  # a sigmoid head, as binary segmenters export
    x = torch.rand(64, 1, 8, 8)
    y = (x[:, 0] > 0.5).long()
    with logits_only(module, per_sample=False):
        before = task_loss(module(x), y).item()
        fit(module, x, y, epochs=100, lr=0.5)
        assert task_loss(module(x), y).item() < before / 2


class BinarySegmenter(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1)
        )

    def forward(self, x):
        return torch.sigmoid(self.body(x))


@pytest.fixture(scope="module")
def binary_shapes(tmp_path_factory):
    """sample:shapes with every shape one positive class, and a sigmoid segmenter trained on it, exported to ONNX."""
    from squeezer.core.intake.data import synthetic_shapes

    root = tmp_path_factory.mktemp("binary")
    x, masks = synthetic_shapes(400, seed=1)
    masks = (masks > 0).astype(np.uint8)
    np.savez(root / "shapes.npz", x_train=x[:300], y_train=masks[:300], x_val=x[300:], y_val=masks[300:])
    torch.manual_seed(0)
    module = nn.Sequential(*BinarySegmenter().body, nn.Sigmoid())
    fit(module, torch.from_numpy(x[:300]), torch.from_numpy(masks[:300]).long(), epochs=40, lr=0.05)
    torch.onnx.export(
        module.eval(),
        torch.zeros(1, 3, 32, 32),
        root / "seg.onnx",
        dynamo=False,
        opset_version=13,
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": {0: "n"}, "y": {0: "n"}},
    )
    return root


@pytest.mark.parametrize("method", ["lwct", "filter"])
def test_a_binary_segmenter_with_a_sigmoid_compresses(binary_shapes, method, tmp_path):
    config = CompressConfig(
        method=method,
        task="segmentation",
        device="cpu",
        target=AccuracyTarget(max_drop=5, metric="iou"),
        **own_options(method, min_steps=20),
    )
    report = compress_files(ModelSource(binary_shapes / "seg.onnx"), binary_shapes / "shapes.npz", tmp_path, config)
    assert report["metric"] == "iou" and report["baseline"]["accuracy"] > 60  # thresholded at 0.5, not argmax of one
    assert abs(report["onnx_accuracy"] - report["compressed"]["accuracy"]) <= 0.1
    assert "Sigmoid" in {node.op_type for node in onnx.load(tmp_path / "model.onnx").graph.node}
