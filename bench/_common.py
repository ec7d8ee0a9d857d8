"""Helpers shared by the engine benchmarks: where results go, what machine measured them, and the reference model."""

import json
import os
import platform
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def write_result(name: str, result: dict) -> Path:
    path = REPO / "bench" / "results" / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path


def machine() -> str:
    import torch

    return (
        f"{platform.machine()}, {os.cpu_count()} CPUs visible, torch {torch.__version__} "
        f"with {torch.get_num_threads()} intra-op threads"
    )


def lenet5():
    """The reference network: LeNet-5 for 28×28 grey images, 10 classes."""
    from core.intake.registry import build_architecture

    return build_architecture("lenet5", {"in_channels": 1, "num_classes": 10, "input_size": 28})
