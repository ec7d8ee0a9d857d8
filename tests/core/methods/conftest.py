import pytest
import torch

from squeezer.core.intake.data import load_dataset
from squeezer.core.intake.models import LoadedModel
from squeezer.core.intake.registry import build_architecture
from squeezer.core.train import fit

DIGITS_ARCH = {"name": "lenet5", "args": {"input_size": 8, "in_channels": 1, "num_classes": 10}}


@pytest.fixture(scope="session")
def digits():
    return load_dataset("sample:digits")


@pytest.fixture(scope="session")
def trained_digits_state(digits):
    """A lenet5 baseline trained once per session on sklearn digits (a few seconds on CPU)."""
    torch.manual_seed(0)
    module = build_architecture(DIGITS_ARCH["name"], DIGITS_ARCH["args"])
    fit(module, digits.x_train, digits.y_train, epochs=15, lr=0.05, seed=0)
    return {k: v.clone() for k, v in module.state_dict().items()}


@pytest.fixture
def digits_model(trained_digits_state) -> LoadedModel:
    module = build_architecture(DIGITS_ARCH["name"], DIGITS_ARCH["args"])
    module.load_state_dict(trained_digits_state)
    return LoadedModel.built(module.eval(), DIGITS_ARCH, (1, 8, 8), 10)
