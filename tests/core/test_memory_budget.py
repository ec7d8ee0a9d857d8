"""The memory estimate of a job, from one sample's activations at the batches the worker will use."""

import pytest
import torch

from squeezer.core import limits, memory_budget
from squeezer.core.config import CompressConfig
from squeezer.core.intake.models import load_model
from squeezer.core.memory_budget import ENGINE_BYTES, FLOAT_BYTES, JobTooLarge
from tests.hostile.corpus import upsampler_onnx


@pytest.fixture
def upsampler(tmp_path):
    """The ×64 upsampler: 16 channels of 512×512 per 8×8 sample."""
    return load_model(upsampler_onnx(tmp_path / "up.onnx", scale=64, channels=16)).module


def test_the_profile_counts_every_layer_output_and_the_largest_layer(upsampler):
    profile = memory_budget.profile(upsampler, torch.zeros(2, 1, 8, 8))
    resized = 16 * 512 * 512
    assert profile.peak_elements == resized + 16 * 8 * 8  # Resize's input and output
    assert profile.total_elements == 16 * 8 * 8 + resized + 16 + 16  # Conv, Resize, pool, flatten
    assert profile.parameters == 16 + 16


def test_a_tiny_upsampler_needs_gigabytes_at_the_evaluation_batch(upsampler):
    profile = memory_budget.profile(upsampler, torch.zeros(1, 1, 8, 8))
    need = memory_budget.estimate(profile, CompressConfig(), train_samples=5000, val_samples=5000)
    assert (need.stage, need.batch) == ("evaluation", memory_budget.EVALUATION_BATCH) == ("evaluation", 512)
    assert need.bytes == ENGINE_BYTES + 4 * FLOAT_BYTES * 32 + 512 * profile.peak_elements * FLOAT_BYTES
    assert need.bytes > 12 << 30
    with limits.using(limits.IntakeLimits(job_memory_bytes=need.bytes - 1)):
        with pytest.raises(JobTooLarge, match="SQUEEZER_JOB_MEMORY_BYTES") as refused:
            memory_budget.check_fits(
                upsampler, torch.zeros(1, 1, 8, 8), CompressConfig(), train_samples=5000, val_samples=5000
            )
    assert refused.value.code == "job_too_large" and "evaluation at batch 512" in refused.value.message
    with limits.using(limits.IntakeLimits(job_memory_bytes=need.bytes)):
        assert (
            memory_budget.check_fits(
                upsampler, torch.zeros(1, 1, 8, 8), CompressConfig(), train_samples=5000, val_samples=5000
            )
            == need
        )


def test_training_batches_follow_the_method_and_name_the_option_that_sets_them(upsampler):
    profile = memory_budget.profile(upsampler, torch.zeros(1, 1, 8, 8))
    config = CompressConfig(method="auto", filter={"batch_size": 4096}, lwct={"batch_size": 64})
    need = memory_budget.estimate(profile, config, train_samples=10_000, val_samples=100)
    assert (need.stage, need.batch, need.setting) == ("training", 4096, "options.filter.batch_size")
    assert need.bytes == ENGINE_BYTES + 4 * FLOAT_BYTES * 32 + 4096 * 2 * profile.total_elements * FLOAT_BYTES
    capped = memory_budget.estimate(profile, config, train_samples=20, val_samples=100)
    assert capped.stage == "evaluation" and capped.batch == 100  # no batch is larger than the data
    int8 = memory_budget.estimate(profile, CompressConfig(method="int8"), train_samples=10_000, val_samples=10)
    assert int8.stage == "evaluation"  # int8 does not train


def test_the_estimate_is_deterministic(upsampler):
    first = memory_budget.profile(upsampler, torch.randn(1, 1, 8, 8))
    assert memory_budget.profile(upsampler, torch.randn(1, 1, 8, 8)) == first
