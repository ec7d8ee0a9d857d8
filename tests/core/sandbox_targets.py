"""Functions the sandbox tests run in the child (importable by name from a clean interpreter)."""

import os
import time
from pathlib import Path

from squeezer.core.errors import DatasetError


def echo(payload: dict) -> dict:
    return {"echo": payload, "cwd": os.getcwd(), "cwd_entries": os.listdir("."), "pid": os.getpid()}


def environment(_: dict) -> dict:
    return {
        "environ": dict(os.environ),
        "proc_environ": Path("/proc/self/environ").read_bytes().decode(errors="replace"),
    }


def read_relative(payload: dict) -> dict:
    """What an external-data path relative to the working directory would find."""
    path = Path(payload["path"])
    return {"exists": path.exists()}


def refuse(_: dict) -> dict:
    raise DatasetError("x_train holds 3 samples", code="invalid_dataset")


def allocate(payload: dict) -> dict:
    blocks = [bytearray(payload["block_bytes"]) for _ in range(payload["blocks"])]
    return {"allocated": sum(map(len, blocks))}


def allocate_numpy(payload: dict) -> dict:
    import numpy as np

    return {"sum": float(np.ones(payload["elements"], dtype=np.float64).sum())}


def spin(_: dict) -> dict:
    while True:
        pass


def sleep(payload: dict) -> dict:
    time.sleep(payload["seconds"])
    return {}


def crash(_: dict) -> dict:
    import ctypes

    ctypes.string_at(0)
    return {}


def unexpected(_: dict) -> dict:
    raise KeyError("/srv/squeezer/secret-path")


def extract(payload: dict) -> dict:
    """safe_extract in the child, so a test can read the peak memory of the attempt."""
    from squeezer.core.intake.archives import safe_extract

    safe_extract(Path(payload["archive"]), Path(payload["dest"]))
    return {"extracted": True}


def build(payload: dict) -> dict:
    from squeezer.core.intake.registry import build_architecture

    module = build_architecture(payload["name"], payload["args"])
    return {"params": sum(p.numel() for p in module.parameters())}


def read_state(payload: dict) -> dict:
    from squeezer.core.intake.models import _read_state_dict

    return {"keys": sorted(_read_state_dict(Path(payload["path"])))}


def inspect_sqz(payload: dict) -> dict:
    from squeezer.core import limits
    from squeezer.core.artifacts.sqz import inspect_sqz as inspect

    with limits.using(limits.IntakeLimits(max_model_bytes=payload["max_model_bytes"])):
        return inspect(bytes.fromhex(payload["data"]))


def address_space(_: dict) -> dict:
    """The child's address space at start (the zygote's imports): what a memory limit must leave room above."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return {"bytes": int(line.split()[1]) * 1024}
    return {}
