"""Depth pruning (issue 28, item 2): on every network of the compatibility table (tests/core/test_compat.py) and our
own, removing every identity-shortcut block found keeps the model valid (it runs, keeps its output shape and still
traces for channel removal), or the model is refused with its reason; the choice follows measured sensitivity
within its floor; a saved record rebuilds the depth-pruned shape and refuses names that are not its blocks."""

import copy

import pytest
import torch
from torchvision import models

from squeezer.core.errors import ModelFormatError
from squeezer.core.intake.registry import build_architecture
from squeezer.core.methods.depth import (
    BLOCKS_ARG,
    Block,
    check_valid,
    choose_blocks,
    remove_blocks,
    residual_blocks,
)

SIZE = 32
COMPATIBILITY_TABLE = [
    "mobilenet_v2",
    "mobilenet_v3_small",
    "efficientnet_b0",
    "regnet_x_400mf",
    "shufflenet_v2_x0_5",
    "resnet18",
    "resnet50",
    "densenet121",
    "convnext_tiny",
]
# Networks without identity-shortcut blocks: channel shuffles and concatenations, or no shortcut at all.
NO_BLOCKS = {"shufflenet_v2_x0_5", "densenet121", "unet-small", "lenet5"}


def _network(arch: str) -> tuple[torch.nn.Module, tuple[int, ...]]:
    torch.manual_seed(0)
    if arch == "lenet5":
        return build_architecture(arch, {}).eval(), (1, 28, 28)
    if arch in ("resnet20", "unet-small"):
        return build_architecture(arch, {}).eval(), (3, SIZE, SIZE)
    return models.get_model(arch, weights=None, num_classes=10).eval(), (3, SIZE, SIZE)


@pytest.mark.slow
@pytest.mark.parametrize("arch", [*COMPATIBILITY_TABLE, "resnet20", "unet-small", "lenet5"])
def test_removing_every_block_keeps_the_graph_valid_or_says_why(arch):
    module, shape = _network(arch)
    with torch.no_grad():
        output_shape = tuple(module(torch.zeros(2, *shape)).shape)
    blocks = residual_blocks(module, shape)
    if arch in NO_BLOCKS:
        assert blocks == []  # the method refuses these: nothing to remove (core.methods.depth's docstring)
        return
    assert blocks, f"{arch}: no residual block found"
    names = [block.name for block in blocks]
    assert not any(a.startswith(f"{b}.") for a in names for b in names)  # none inside another
    before = sum(p.numel() for p in module.parameters())
    pruned = remove_blocks(copy.deepcopy(module), blocks)
    check_valid(pruned, shape, output_shape)
    assert sum(p.numel() for p in pruned.parameters()) < before


def test_a_removed_block_computes_its_shortcut():
    module, shape = _network("resnet20")
    block = residual_blocks(module, shape)[0]
    assert block == Block("layer1.0", "relu")
    x = torch.randn(2, 16, SIZE, SIZE)
    replaced = remove_blocks(copy.deepcopy(module), [block]).get_submodule(block.name)
    zeroed = copy.deepcopy(module.get_submodule(block.name))
    torch.nn.init.zeros_(zeroed.bn2.weight)
    torch.nn.init.zeros_(zeroed.bn2.bias)  # the branch outputs zero
    with torch.no_grad():
        assert torch.equal(replaced(x), zeroed.eval()(x))


def _agreement(reference: torch.nn.Module, x: torch.Tensor):
    """A measured score: percent of samples whose prediction matches the unpruned model's."""
    with torch.no_grad():
        expected = reference(x).argmax(1)

    def score(module: torch.nn.Module) -> float:
        with torch.no_grad():
            return 100.0 * float((module.eval()(x).argmax(1) == expected).float().mean())

    return score


@pytest.mark.slow
def test_choice_stays_above_its_floor_and_follows_sensitivity():
    module, shape = _network("resnet20")
    x = torch.randn(64, *shape, generator=torch.Generator().manual_seed(1))
    score = _agreement(module, x)
    blocks = residual_blocks(module, shape)
    assert choose_blocks(module, blocks, score, floor=101.0) == []
    assert sorted(b.name for b in choose_blocks(module, blocks, score, floor=-1.0)) == sorted(b.name for b in blocks)
    floor = 80.0
    chosen = choose_blocks(module, blocks, score, floor=floor)
    assert score(remove_blocks(copy.deepcopy(module), chosen)) >= floor
    assert chosen == choose_blocks(module, blocks, score, floor=floor)  # deterministic given the scores
    assert len(chosen) < len(blocks)


def test_a_saved_record_rebuilds_without_its_blocks_and_refuses_other_names():
    module = build_architecture("resnet20", {BLOCKS_ARG: {"layer1.1": "relu", "layer3.2": "relu"}})
    assert isinstance(module.get_submodule("layer1.1"), torch.nn.ReLU)
    assert isinstance(module.get_submodule("layer3.2"), torch.nn.ReLU)
    assert module(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 10)
    for record in ({"layer2.0": "relu"}, {"fc": "identity"}, {"layer1.1": "print"}, ["layer1.1"]):
        with pytest.raises(ModelFormatError):
            build_architecture("resnet20", {BLOCKS_ARG: record})
