"""Limits on every request body, whatever its Content-Type: each route has a body limit (the upload route the upload
limit plus multipart overhead, every other route 1 MiB), enforced on the declared length before a byte is read and
on the bytes as they arrive (413 `payload_too_large`). Bodies of other routes are read whole before they are parsed,
so their nesting depth is bounded here too (400 `json_too_deep`). The upload streams through, counted. A request
with more than one Content-Type header is refused (400 `ambiguous_content_type`): the parts of the stack that read
it must not disagree on what the body is."""

import json
from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from squeezer.api.errors import PROBLEM_MEDIA_TYPE, ProblemError, problem_type

MAX_JSON_BODY_BYTES = 1024 * 1024
MAX_JSON_DEPTH = 32


def json_depth(body: bytes) -> int:
    """The deepest nesting of [ and { outside strings (the parser's recursion is what depth costs)."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in body:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def decimal(text: str | bytes, maximum: int) -> int | None:
    """`text` as a number when it is ASCII digits only and at most `maximum`, else None. str.isdigit and int() also
    take other scripts' digits (², ٣, which int() then refuses) and numbers of any length."""
    text = text.decode("latin-1") if isinstance(text, bytes) else text
    if not (0 < len(text) <= len(str(maximum)) and text.isascii() and text.isdigit()):
        return None
    value = int(text)
    return value if value <= maximum else None


UPLOAD_ROUTE = ("POST", "/v1/artifacts")
# What an upload body may carry besides its file: boundaries, part headers, form fields.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
_BODYLESS_METHODS = ("GET", "HEAD", "DELETE", "OPTIONS")


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_bytes: int = MAX_JSON_BODY_BYTES, max_depth: int = MAX_JSON_DEPTH):
        self.app = app
        self.max_bytes = max_bytes
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        content_types = [value for name, value in scope["headers"] if name == b"content-type"]
        if len(content_types) > 1:
            return await send_problem(
                scope, send, 400, "ambiguous_content_type", "send one Content-Type header, not several"
            )
        if scope["method"] in _BODYLESS_METHODS:
            return await self.app(scope, receive, send)
        upload = (scope["method"], scope["path"]) == UPLOAD_ROUTE
        limit = scope["app"].state.settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES if upload else self.max_bytes
        detail = f"request bodies on {scope['path']} are limited to {limit} bytes"
        declared = [value for name, value in scope["headers"] if name == b"content-length"]
        if any(decimal(value, limit) is None for value in declared):
            return await send_problem(scope, send, 413, "payload_too_large", detail)
        if upload:
            return await self.app(scope, _counted(receive, limit, detail), send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                return await send_problem(scope, send, 413, "payload_too_large", detail)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if json_depth(body) > self.max_depth:
            return await send_problem(
                scope, send, 400, "json_too_deep", f"JSON bodies may nest at most {self.max_depth} levels deep"
            )
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


def _counted(receive: Receive, limit: int, detail: str) -> Receive:
    """`receive` that raises a 413 problem (answered by the app's handlers) once the body passes `limit`."""
    size = 0

    async def counted() -> Message:
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise ProblemError(413, "payload_too_large", detail)
        return message

    return counted


async def send_problem(
    scope: Scope, send: Send, status: int, code: str, detail: str, extra_headers: list | None = None
) -> None:
    """A problem answered from a middleware, before the app (and its exception handlers) ran."""
    body = json.dumps(
        {
            "type": problem_type(code),
            "title": HTTPStatus(status).phrase,
            "status": status,
            "detail": detail,
            "instance": scope["path"],
        }
    ).encode()
    headers = [
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
        *(extra_headers or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
