"""The registry looks architecture names up in tables it owns: no user string reaches getattr or an import, and
torchvision models are built only from its image classifiers, with no weights of any kind."""

import inspect

import pytest
import torch
from torchvision import models

from squeezer.core.errors import ModelFormatError
from squeezer.core.intake.registry import _torchvision_classifiers, build_architecture

NOT_CLASSIFIERS = [
    "fasterrcnn_resnet50_fpn",
    "maskrcnn_resnet50_fpn",
    "deeplabv3_resnet50",
    "fcn_resnet50",
    "lraspp_mobilenet_v3_large",
    "r3d_18",
    "mvit_v1_b",
    "raft_small",
    "quantized_resnet18",
]


@pytest.mark.parametrize("name", NOT_CLASSIFIERS)
def test_torchvision_builders_that_need_or_fetch_weights_are_refused_by_name(name):
    with pytest.raises(ModelFormatError, match="not an image classifier") as refusal:
        build_architecture(f"torchvision:{name}", {})
    assert refusal.value.code == "invalid_model"


@pytest.mark.parametrize(
    "name",
    [
        "torchvision:__class__",
        "torchvision:get_model",
        "torchvision:ResNet",
        "torchvision:RESNET18",
        "torchvision:resnet18 ",
        "torchvision:_api",
        "torchvision:",
        "torchvision:__import__('os').system('true')",
        "__init__",
        "LeNet5",
        "forward",
        "lenet5\n",
    ],
)
def test_names_are_looked_up_in_a_table_never_reached_as_attributes(name):
    with pytest.raises(ModelFormatError, match="unknown") as refusal:
        build_architecture(name, {})
    assert "\n" not in refusal.value.message


@pytest.mark.parametrize("argument", ["weights", "weights_backbone", "pretrained", "progress"])
def test_a_torchvision_build_takes_no_weight_argument(argument):
    with pytest.raises(ModelFormatError, match=f"takes no {argument}"):
        build_architecture("torchvision:resnet18", {argument: "DEFAULT"})


def test_the_torchvision_table_holds_only_classifiers_built_without_weights():
    table = _torchvision_classifiers()
    assert set(table) == set(models.list_models(module=models)) and "resnet18" in table
    assert not set(table) & set(NOT_CLASSIFIERS)
    for builder in table.values():
        assert "weights_backbone" not in inspect.signature(builder).parameters


def test_building_a_torchvision_model_fetches_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    module = build_architecture("torchvision:squeezenet1_1", {"num_classes": 3})
    with torch.no_grad():
        assert module.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 3)
    assert not any(tmp_path.rglob("*"))


def test_hostile_argument_names_are_refused_and_quoted_capped():
    key = "__class__" + "A" * 2**20 + "\n"
    with pytest.raises(ModelFormatError) as refusal:
        build_architecture("lenet5", {key: 1})
    assert len(refusal.value.message) < 1000 and "\n" not in refusal.value.message
    with pytest.raises(ModelFormatError) as refusal:
        build_architecture("resnet20", {key: 1})
    assert len(refusal.value.message) < 1000 and "\n" not in refusal.value.message
