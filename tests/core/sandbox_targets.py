"""Functions the sandbox tests run in the child (importable by name from a clean interpreter)."""

import os
import time
from pathlib import Path

from core.errors import DatasetError


def echo(payload: dict) -> dict:
    return {"echo": payload, "cwd": os.getcwd(), "cwd_entries": os.listdir("."), "pid": os.getpid()}


def environment(_: dict) -> dict:
    return {"environ": dict(os.environ), "proc_environ": Path("/proc/self/environ").read_bytes().decode(errors="replace")}


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
    from core.intake.archives import safe_extract

    safe_extract(Path(payload["archive"]), Path(payload["dest"]))
    return {"extracted": True}
