"""Errors the engine raises. Each carries a stable `code` that the CLI (exit 2), the API
(422 problem `type`) and failed jobs (`error.code`) expose unchanged."""


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
