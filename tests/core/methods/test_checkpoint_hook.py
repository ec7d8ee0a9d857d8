"""Checkpoints reach the caller through their own hook, once each is on disk; events only report them."""

import pytest
import torch

from squeezer.core.config import CompressConfig
from squeezer.core.events import EventStage
from squeezer.core.methods.harness import MethodRun

pytestmark = pytest.mark.slow  # trains models: in the full suite, not the fast tier


def test_on_checkpoint_hears_of_each_written_checkpoint_once_it_is_on_disk(digits_model, digits, tmp_path):
    kept: list[bool] = []
    events = []
    hooks = {"on_event": events.append, "checkpoint_dir": tmp_path}
    run = MethodRun(
        digits_model,
        digits,
        CompressConfig(device="cpu"),
        None,
        name="lwct",
        **hooks,
        on_checkpoint=lambda: kept.append((tmp_path / "lwct.json").is_file()),
    )
    run.save({"weights": torch.zeros(2)}, {"level": 1}, 0.5)
    assert kept == [True]
    assert [e.stage for e in events] == [EventStage.CHECKPOINT]
    resumed = MethodRun(
        digits_model,
        digits,
        CompressConfig(device="cpu"),
        None,
        name="lwct",
        **hooks,
        on_checkpoint=lambda: kept.append(False),
    )
    assert resumed.resume() is not None and kept == [True]  # resuming writes nothing to keep


def test_without_a_checkpoint_folder_nothing_is_written_or_announced(digits_model, digits):
    kept: list[bool] = []
    run = MethodRun(
        digits_model, digits, CompressConfig(device="cpu"), None, name="lwct", on_checkpoint=lambda: kept.append(True)
    )
    run.save({"weights": torch.zeros(2)}, {}, 0.5)
    assert kept == []
