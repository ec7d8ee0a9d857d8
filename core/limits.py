"""Budgets that every size an upload declares is checked against before memory is allocated or bytes are unpacked.

The defaults let a realistic job through (models of hundreds of millions of parameters, data sets of a few GiB) and
refuse what cannot fit on a worker. The service sets them from its settings (store.settings, SQUEEZER_* variables)
around every check and job with `using(...)`; library and CLI use get the defaults. A refusal names the limit and
the setting that raises it (`exceeded`).
"""

import contextlib
import contextvars
import dataclasses
from collections.abc import Iterator

from squeezer.core.errors import InputError


@dataclasses.dataclass(frozen=True)
class IntakeLimits:
    max_model_params: int = 500_000_000  # 2 GiB of float32 weights
    max_model_bytes: int = 4 << 30  # a .pt archive's records, a .sqz body once decompressed
    max_input_elements: int = 1 << 26  # C×H×W of one sample: 3×4096×4096 fits
    max_activation_elements: int = 1 << 30  # sum of every layer's output for one sample (4 GiB of float32)
    max_archive_members: int = 200_000
    max_archive_bytes: int = 16 << 30  # what an archive may unpack to, whatever its ratio
    max_archive_header_bytes: int = 64 << 10  # one tar pax or GNU long-name header
    max_dataset_bytes: int = 32 << 30  # what intake holds of a data set: inputs as float32, labels as int64
    max_decoded_pixels: int = 1 << 32  # pixels × channels an image folder decodes, over every image
    job_memory_bytes: int = 16 << 30  # one job's engine process on a worker (core.memory_budget estimates its need)


SETTING_NAMES = {field.name: f"SQUEEZER_{field.name.upper()}" for field in dataclasses.fields(IntakeLimits)}
_DEFAULT = IntakeLimits()  # frozen: one shared default is safe
_current: contextvars.ContextVar[IntakeLimits] = contextvars.ContextVar("intake_limits", default=_DEFAULT)


def current() -> IntakeLimits:
    return _current.get()


@contextlib.contextmanager
def using(limits: IntakeLimits) -> Iterator[IntakeLimits]:
    token = _current.set(limits)
    try:
        yield limits
    finally:
        _current.reset(token)


def exceeded(what: str, value: int, limit_name: str, error: type[InputError] = InputError) -> InputError:
    """The refusal for `what` (declared `value`) past the limit `limit_name`, naming the setting that raises it."""
    limit = getattr(current(), limit_name)
    return error(
        f"{what} is {value:,}; the limit is {limit:,} (raise {SETTING_NAMES[limit_name]} if it is meant to fit)"
    )


def check(what: str, value: int, limit_name: str, error: type[InputError] = InputError) -> None:
    if value > getattr(current(), limit_name):
        raise exceeded(what, value, limit_name, error)
