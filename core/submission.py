"""The submission check as JSON in, JSON out, so that it can run in a core.sandbox child (in the engine's jail): the
API never parses an upload itself."""

import dataclasses
from pathlib import Path

from core import limits
from core.config import CompressConfig
from core.jail import Jail, JailMode
from core.sandbox import SandboxLimits, shared_sandbox

# What the unjailed sandbox's zygote imports once, so that each check forks with the engine already loaded. A jailed
# check is a fresh interpreter each time: it imports only what the inputs need.
PRELOAD = ("core.submission", "core.pipeline", "onnx", "onnxruntime", "onnx2torch")
TARGET = "core.submission:check_payload"


def run_check(request: dict, budgets: SandboxLimits, jail: Jail, inputs_dir: Path) -> dict:
    """check_payload on `request` (check_request's) in the sandbox, in `jail`: the summary, or the InputError (or
    SandboxError) the inputs in `inputs_dir` earn."""
    preload = () if jail.mode is JailMode.BWRAP else PRELOAD
    return shared_sandbox(budgets, preload, jail).run(TARGET, request, budgets, visible=(inputs_dir,))


def check_payload(payload: dict) -> dict:
    """`payload`: {"model": {"path", "architecture", "arch_args"}, "data": path or "sample:NAME", "config": {...},
    "limits": {...}} (core.limits.IntakeLimits). Returns the InputSummary as a dict; raises the InputError a job would
    fail with."""
    from core.pipeline import ModelSource, check_inputs

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
