"""Squeezer: CNN compression under an accuracy budget, as a library (`compress`, `evaluate`, `load`) and as a job
service (`squeezer.api`, `squeezer.worker`).

The library's names load on first use: every `import squeezer.core…` runs this file, and the API process, the
workers and the jail's engine must not pay for torch and the pipeline before they need them."""

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from squeezer.library import CompressionResult, Evaluation, compress, evaluate, load

__all__ = ["CompressionResult", "Evaluation", "compress", "evaluate", "load"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module("squeezer.library"), name)
    raise AttributeError(f"module 'squeezer' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
