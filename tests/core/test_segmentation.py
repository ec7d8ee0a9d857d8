"""Segmentation end to end: metrics by hand, mask data (npz, paired folders, sample:shapes), unet-small's channel
surgery through its concatenation skips, filter pruning under a pixel-accuracy budget, the CLI flags."""

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from squeezer.cli.main import app
from squeezer.core.artifacts.sqz import load_sqz, write_sqz
from squeezer.core.config import AccuracyTarget, CompressConfig, FilterConfig, LwctConfig
from squeezer.core.errors import MismatchError
from squeezer.core.graph import mask_consumers, producer_widths, shrink, trace
from squeezer.core.intake.data import check_compatible, load_dataset, synthetic_shapes
from squeezer.core.intake.models import LoadedModel, save_model_dir
from squeezer.core.intake.registry import build_architecture
from squeezer.core.measure import count_macs, metric_function, miou, score_predictions
from squeezer.core.methods.filter import compress_filter
from squeezer.core.methods.lwct import compress_lwct
from squeezer.core.methods.structured import keep_one_per_group
from squeezer.core.train import fit

pytestmark = pytest.mark.slow  # trains models: in the full suite, not the fast tier


UNET = {"name": "unet-small", "args": {"width": 8, "in_channels": 3, "num_classes": 3}}
# Seconds on one CPU thread: 32 SGD steps of 32 samples per stage, three levels.
QUICK_FILTER = {
    "importance_epochs": 1,
    "epochs_per_step": 1,
    "min_steps_per_stage": 32,
    "batch_size": 32,
    "lr": 0.05,
    "max_train_samples": 256,
    "levels": [0.2, 0.4, 0.6],
    "init": ["l1"],
}


def test_pixel_accuracy_and_miou_by_hand():
    predictions = torch.tensor([[[0, 1], [1, 1]]])
    masks = torch.tensor([[[0, 1], [0, 1]]])
    assert score_predictions("pixel_accuracy", predictions, masks) == 75.0
    # class 0: 1 pixel in both, 2 in the union; class 1: 2 in both, 3 in the union; class 2 appears nowhere
    assert miou(predictions, masks) == pytest.approx(100 * (1 / 2 + 2 / 3) / 2)
    assert miou(masks, masks) == 100.0


def test_shapes_sample_is_deterministic_synthetic_segmentation_data():
    first, second = synthetic_shapes(8, seed=0), synthetic_shapes(8, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(first, second, strict=True))
    images, masks = first
    assert images.shape == (8, 3, 32, 32) and masks.shape == (8, 32, 32)
    assert set(np.unique(masks)) <= {0, 1, 2} and images.min() >= 0 and images.max() <= 1


def test_npz_masks_and_paired_folders_load_as_segmentation(tmp_path):
    from PIL import Image

    images, masks = synthetic_shapes(6, seed=1)
    pixels = (images * 255).round().astype(np.uint8)
    np.savez(tmp_path / "seg.npz", x_train=pixels[:4], y_train=masks[:4], x_val=pixels[4:], y_val=masks[4:])
    from_npz = load_dataset(tmp_path / "seg.npz")
    for split, indices in (("train", range(4)), ("val", range(4, 6))):
        for kind in ("images", "masks"):
            (tmp_path / "folders" / split / kind).mkdir(parents=True)
        for i in indices:
            Image.fromarray(pixels[i].transpose(1, 2, 0)).save(tmp_path / "folders" / split / "images" / f"{i}.png")
            Image.fromarray(masks[i]).save(tmp_path / "folders" / split / "masks" / f"{i}.png")
    from_folders = load_dataset(tmp_path / "folders")
    for data in (from_npz, from_folders):
        assert data.task == "segmentation" and data.num_classes == int(masks.max()) + 1
        assert data.y_train.shape == (4, 32, 32) and data.x_val.shape == (2, 3, 32, 32)
    assert torch.equal(from_npz.x_train[:], from_folders.x_train[:]) and torch.equal(from_npz.y_val, from_folders.y_val)


def test_surgery_through_unet_skips_computes_what_the_masked_model_computes():
    torch.manual_seed(0)
    module = build_architecture("unet-small", {"width": 4})
    for layer in module.modules():  # non-trivial batch-norm statistics, so removed channels would show
        if isinstance(layer, torch.nn.BatchNorm2d):
            layer.running_mean.uniform_(-0.5, 0.5)
            layer.running_var.uniform_(0.5, 1.5)
    module.eval()
    graph = trace(module, (3, 32, 32))
    assert not graph.unsupported
    order = torch.randperm(len(graph.removable()), generator=torch.Generator().manual_seed(0)).tolist()
    removed = keep_one_per_group(graph, [graph.removable()[i] for i in order], len(order) // 2)
    x = torch.randn(2, 3, 32, 32)
    handles = mask_consumers(module, graph, removed)
    with torch.no_grad():
        expected = module(x)
    for handle in handles:
        handle.remove()
    shrunk = shrink(module, graph, removed)
    with torch.no_grad():
        torch.testing.assert_close(shrunk(x), expected, rtol=1e-5, atol=1e-5)
    widths = producer_widths(shrunk)
    assert shrunk.dec2[0].in_channels == widths["up2"] + widths["enc2.3"]  # the concatenation lost both sides' channels
    rebuilt = build_architecture("unet-small", {"width": 4, "channels": widths})
    rebuilt.load_state_dict(shrunk.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(x), expected, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def shapes():
    return load_dataset("sample:shapes")


@pytest.fixture(scope="module")
def unet_model(shapes) -> LoadedModel:
    """unet-small (width 8) trained for three epochs on sample:shapes (about 10 s on one CPU thread)."""
    torch.manual_seed(0)
    module = build_architecture(UNET["name"], UNET["args"])
    fit(module, shapes.x_train, shapes.y_train, epochs=3, lr=0.05, batch_size=32, seed=0)
    return LoadedModel.built(module.eval(), UNET, (3, 32, 32), 3)


def test_a_classifier_cannot_take_segmentation_data(shapes, unet_model):
    check_compatible(unet_model, shapes)
    classifier = build_architecture("vgg-small", {"width": 4, "num_classes": 3})
    model = LoadedModel(classifier.eval(), {"name": "vgg-small", "args": {}}, "squeezer", None, 3, None, None)
    with pytest.raises(MismatchError, match="segmentation model must output"):
        check_compatible(model, shapes)


def test_filter_on_shapes_stays_within_a_one_point_pixel_accuracy_budget(shapes, unet_model):
    config = CompressConfig(
        method="filter",
        task="segmentation",
        device="cpu",
        target=AccuracyTarget(max_drop=1.0),
        filter=FilterConfig(**QUICK_FILTER),
    )
    assert config.target.metric == "pixel_accuracy"
    score = metric_function("pixel_accuracy")
    baseline = score(unet_model.module, shapes.x_val, shapes.y_val)
    result = compress_filter(unet_model, shapes, config)
    assert result.accuracy == score(result.module, shapes.x_val, shapes.y_val)
    assert baseline - result.accuracy <= 1.0 and result.target_met
    assert all(baseline - t.accuracy > 1.0 for t in result.trials if not t.accepted)
    assert any(t.accepted for t in result.trials)
    assert count_macs(result.module, (3, 32, 32)) < count_macs(unet_model.module, (3, 32, 32))
    assert {layer.name: layer.channels_kept for layer in result.layers}["head"] == 3


def test_lwct_constrains_unet_convolutions_transposed_ones_included(shapes, unet_model, tmp_path):
    lwct = LwctConfig(
        sparsity_grid=[0.5],
        prune_epochs=1,
        epochs_per_step=1,
        min_steps_per_stage=8,
        max_train_samples=128,
        batch_size=32,
    )
    config = CompressConfig(task="segmentation", device="cpu", target=AccuracyTarget(max_drop=100), lwct=lwct)
    result = compress_lwct(unet_model, shapes, config)
    rows = {layer.name: layer for layer in result.layers}
    assert rows["up1"].type == "ConvTranspose2d" and rows["up1"].representation == "ternary"
    weight = result.module.up1.weight.detach()
    magnitudes = weight.abs().unique()
    assert magnitudes[0] == 0 and len(magnitudes) == 2 and float(magnitudes[1]) == pytest.approx(rows["up1"].sigma)
    write_sqz(tmp_path / "model.sqz", unet_model.with_module(result.module), result.layers)
    score = metric_function("pixel_accuracy")
    assert score(load_sqz(tmp_path / "model.sqz").module, shapes.x_val, shapes.y_val) == result.accuracy


def test_cli_compresses_and_evaluates_segmentation(shapes, unet_model, tmp_path):
    runner = CliRunner()
    save_model_dir(unet_model, tmp_path / "unet")
    out = tmp_path / "out"
    options = [f"filter.{key}={json.dumps(value)}" for key, value in QUICK_FILTER.items()]
    result = runner.invoke(
        app,
        [
            "compress",
            str(tmp_path / "unet"),
            "--data",
            "sample:shapes",
            "--out",
            str(out),
            "--method",
            "filter",
            "--task",
            "segmentation",
            "--metric",
            "miou",
            "--max-drop",
            "100",
            "--device",
            "cpu",
            *[arg for option in options for arg in ("--option", option)],
        ],
    )
    assert result.exit_code == 0, result.output + result.stderr
    assert "miou (%)" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["metric"] == "miou" and report["task"] == "segmentation"
    assert report["compressed"]["latency_ms_batch32"] > 0
    assert report["compressed"]["flops"] < report["baseline"]["flops"]
    for name in ("model.sqz", "model.onnx"):
        evaluated = runner.invoke(
            app, ["evaluate", str(out / name), "--data", "sample:shapes", "--metric", "miou", "--json"]
        )
        assert evaluated.exit_code == 0, evaluated.output + evaluated.stderr
        assert json.loads(evaluated.stdout)["metric"] == "miou"
        assert abs(json.loads(evaluated.stdout)["accuracy"] - report["compressed"]["accuracy"]) <= 0.1
    wrong_task = runner.invoke(app, ["compress", str(tmp_path / "unet"), "--data", "sample:shapes", "--out", str(out)])
    assert wrong_task.exit_code == 2 and "--task segmentation" in wrong_task.stderr
    wrong_metric = runner.invoke(
        app, ["evaluate", str(out / "model.sqz"), "--data", "sample:shapes", "--metric", "top1"]
    )
    assert wrong_metric.exit_code == 2 and "pixel_accuracy or miou" in wrong_metric.stderr
