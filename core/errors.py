"""Errors the engine raises. Each carries a stable `code` that the CLI (exit 2), the API
(422 problem `type`) and failed jobs (`error.code`) expose unchanged."""

import os
import re
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class SqueezerError(Exception):
    """Base class: something the user can act on, with a stable machine-readable code."""

    code = "engine_error"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InputError(SqueezerError):
    """The user's model, data or configuration is unusable (bad input, never a crash)."""

    code = "invalid_input"


class UnsafeFormatError(InputError):
    """A file would need unpickling (full-model pickle, TorchScript, .pt2) to be read."""

    code = "unsafe_model_format"


class ModelFormatError(InputError):
    code = "invalid_model"


class DatasetError(InputError):
    code = "invalid_dataset"


class MismatchError(InputError):
    """Model and data do not fit together (channels, sizes, classes)."""

    code = "model_data_mismatch"


class UnsupportedLayerError(InputError):
    code = "unsupported_layer"


class ArchiveError(InputError):
    """An archive is malformed or hostile (bomb, traversal, links)."""

    code = "invalid_archive"


class Cancelled(SqueezerError):
    """The caller's stop check asked the engine to stop at a step boundary."""

    code = "cancelled"


def short_description(error: BaseException) -> str:
    """`Class: first line of the message`, at most 200 characters: enough to name an unforeseen failure on one line."""
    first_line = (str(error).strip().splitlines() or [""])[0][:200]
    return f"{type(error).__name__}: {first_line}" if first_line else type(error).__name__


# What an allocation failure says where it is not a MemoryError (torch's allocator, C++ bad_alloc, numpy).
_OUT_OF_MEMORY_TEXTS = ("not enough memory", "can't allocate", "cannot allocate memory", "bad_alloc", "out of memory")


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocation failure under a memory limit, however the library that hit it reports one."""
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError | OSError) and any(marker in text for marker in _OUT_OF_MEMORY_TEXTS)


@contextmanager
def unforeseen_as(error_class: type[InputError], subject: str) -> Iterator[None]:
    """Turns an exception no check foresaw, raised by a library while it reads an upload, into `error_class`
    naming the exception, so bad input ends as a stable code and never as a crash. Our own errors pass unchanged,
    and so does running out of memory, which says nothing about the input."""
    try:
        yield
    except SqueezerError:
        raise
    except Exception as error:
        if is_out_of_memory(error):  # torch's allocator says so in a RuntimeError, not a MemoryError
            raise
        raise error_class(f"{subject} could not be read: {short_description(error)}") from error


def _server_roots() -> list[str]:
    """Directories of this machine a message may name by accident (temporary and working folders, the install)."""
    roots = {tempfile.gettempdir(), os.getcwd(), str(Path.home()), sys.prefix, str(Path(__file__).resolve().parents[1])}
    return sorted((root.rstrip("/") for root in roots if len(root) > 1), key=len, reverse=True)


def redact_paths(message: str) -> str:
    """`message` with every path under a server directory cut to its last component: an error a client sees (a 422
    problem, a failed job's message) never tells it where things live here. Library messages quote paths (a file
    that could not be read, a temporary folder); ours name files by their own names."""
    for root in _server_roots():
        message = re.sub(re.escape(root) + r"(/[^\s'\"():,]*)?", lambda m: Path(m.group(0)).name or "…", message)
    return message
