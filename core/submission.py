"""The submission check as JSON in, JSON out, so that it can run in a core.sandbox child (in the engine's jail): the
API never parses an upload itself."""

import contextlib
import dataclasses
from pathlib import Path

from squeezer.core import limits
from squeezer.core.config import CompressConfig
from squeezer.core.jail import Jail
from squeezer.core.sandbox import SandboxLimits, Workspace, shared_sandbox

# What a checking child has imported before its inputs arrive: the unjailed sandbox's zygote imports them once and
# forks a child per check; jailed, each check's jail is started ahead of it and imports them while the API fetches
# the inputs.
PRELOAD = ("squeezer.core.submission", "squeezer.core.pipeline", "onnx", "onnxruntime", "onnx2torch")
TARGET = "squeezer.core.submission:check_payload"
# A check loads and cross-checks the inputs beside the jobs running on the machine: one compute thread leaves their
# cores to them.
CHECK_THREADS = 1


def check_workspace(budgets: SandboxLimits, jail: Jail) -> contextlib.AbstractContextManager[Workspace]:
    """Where one submission's inputs go (`workspace.folder`) and the check to run on them:
    `workspace.run(TARGET, check_request(...))` gives the summary or raises the InputError (or SandboxError) the
    inputs earn."""
    return shared_sandbox(budgets, PRELOAD, jail).workspace(budgets)


def check_payload(payload: dict) -> dict:
    """`payload`: {"model": {"path", "architecture", "arch_args"}, "data": path or "sample:NAME", "config": {...},
    "limits": {...}} (core.limits.IntakeLimits). Returns the InputSummary as a dict; raises the InputError a job would
    fail with."""
    import torch

    from squeezer.core.pipeline import ModelSource, check_inputs

    torch.set_num_threads(CHECK_THREADS)
    model = payload["model"]
    source = ModelSource(Path(model["path"]), model.get("architecture"), model.get("arch_args") or {})
    with limits.using(limits.IntakeLimits(**payload.get("limits", {}))):
        summary = check_inputs(source, payload["data"], CompressConfig.model_validate(payload["config"]))
    return dataclasses.asdict(summary)


def check_request(source, data, config: CompressConfig, budgets: limits.IntakeLimits) -> dict:
    """The payload of check_payload for a ModelSource, a data path, a config and the upload budgets."""
    return {
        "model": {"path": str(source.path), "architecture": source.architecture, "arch_args": source.arch_args},
        "data": str(data),
        "config": config.model_dump(mode="json"),
        "limits": dataclasses.asdict(budgets),
    }
