"""A target run inside a jailed engine by tests/core/test_threads.py (it imports nothing beyond the engine's)."""

import os


def report_threads(payload: dict, _channel) -> dict:
    """The threads torch would use, and what the environment told OpenMP."""
    import torch

    return {"torch": torch.get_num_threads(), "omp": os.environ.get("OMP_NUM_THREADS")}
