"""Helpers shared by the benchmarks: where results go, what machine measured them, the reference model, and the
source tree of a build that a benchmark compares with this one."""

import json
import os
import platform
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKTREE = "WORKTREE"  # a build named so is this checkout, uncommitted changes included


def build_tree(revision: str, root: Path) -> Path:
    """The source tree of `revision`: this checkout for WORKTREE, an exported tree given as a directory, else the
    commit exported under `root` with `git archive` (the repository is left as it is)."""
    if revision == WORKTREE:
        return REPO
    if Path(revision).is_dir():
        return Path(revision)
    tree = root / revision
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", revision], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


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
    from squeezer.core.intake.registry import build_architecture

    return build_architecture("lenet5", {"in_channels": 1, "num_classes": 10, "input_size": 28})
