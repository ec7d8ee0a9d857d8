"""Logging for every entry point (`squeezer api`, `serve`, `worker`, `demo`, `python -m squeezer.worker`, `celery -A
worker.celery_app`): one handler on the root logger, so uvicorn's, Celery's and the libraries' records come out in
the same format as ours.

SQUEEZER_LOG_FORMAT=text is a line for people; json is one object per line for a collector: time, level, event,
logger, and `request_id`, `tenant`, `job_id` where they apply (set with `log_context`, carried by contextvars, so a
request's or a job's lines carry them without each call passing them). Both formats pass through `redact`: an API
key, a webhook secret or a password in a URL never reaches a log line, whoever logged it (an exception's text
included)."""

import contextlib
import json
import logging
import re
import sys
from collections.abc import Iterator
from contextvars import ContextVar
from datetime import UTC, datetime

from squeezer.store.keys import KEY_PREFIX
from squeezer.store.settings import Settings

CONTEXT_FIELDS = ("request_id", "tenant", "job_id")
_context: dict[str, ContextVar[str | None]] = {name: ContextVar(name, default=None) for name in CONTEXT_FIELDS}

MASK = "***"
# An API key (store.keys.KEY_PREFIX + token_urlsafe), a Standard Webhooks secret (base64: up to a delimiter, its
# percent-encoded form in a logged URL included), the password of a URL's userinfo (plain or percent-encoded, as a URL
# inside a logged query string is).
_SECRETS = (
    (re.compile(re.escape(KEY_PREFIX) + r"[A-Za-z0-9_\-]{8,}"), KEY_PREFIX + MASK),
    (re.compile(r"whsec_[^\s\"'&,;<>]+"), "whsec_" + MASK),
    (
        re.compile(
            r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*(?::|%3A)(?://|%2F%2F)[^:/@\s%]*(?::|%3A))[^\s@]+?(?=@|%40)", re.I
        ),
        r"\g<head>" + MASK,
    ),
)
HANDLER_NAME = "squeezer"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(context)s: %(message)s"


def redact(text: str) -> str:
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


@contextlib.contextmanager
def log_context(**fields: str | None) -> Iterator[None]:
    """Lines logged inside carry these fields (request_id, tenant, job_id); they are restored on the way out."""
    tokens = [(_context[name], _context[name].set(value)) for name, value in fields.items()]
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def set_log_field(name: str, value: str | None) -> None:
    """Sets one field for the rest of the current context (a request's task: the tenant once its key is checked)."""
    _context[name].set(value)


def current_log_fields() -> dict[str, str]:
    return {name: value for name, var in _context.items() if (value := var.get()) is not None}


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        fields = current_log_fields()
        record.squeezer_fields = fields
        record.context = "".join(f" {name}={value}" for name, value in fields.items())
        return True


class RedactingTextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        if not hasattr(record, "context"):
            _ContextFilter().filter(record)
        return redact(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (a traceback is the `exception` field's string)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "squeezer_fields", None)
        if fields is None:
            fields = current_log_fields()
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
            **fields,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return redact(json.dumps(line, default=str))


def configure_logging(settings: Settings, *, least_level: str | None = None) -> None:
    """Gives the root logger one handler on stderr in the settings' log_format and log_level (raised to
    `least_level`: the demo keeps its console quiet); the libraries' loggers propagate to it (uvicorn is started
    with log_config=None, Celery through its setup_logging signal)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else RedactingTextFormatter())
    handler.set_name(HANDLER_NAME)
    root = logging.getLogger()
    for old in [old for old in root.handlers if old.get_name() == HANDLER_NAME]:  # a second call replaces the first
        root.removeHandler(old)
    root.addHandler(handler)
    logging.captureWarnings(True)  # a library's warning is a line in the format too
    levels = [logging.getLevelNamesMapping()[name] for name in (settings.log_level, least_level) if name]
    root.setLevel(max(levels))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
