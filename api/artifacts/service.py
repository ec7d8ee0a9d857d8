"""Streamed multipart uploads and downloads.

The request body is parsed as it arrives (python-multipart's push parser) on the event loop, and the file part's
bytes are spooled to a temporary file: memory holds a few network chunks, whatever the file size, the size limit is
enforced as bytes arrive (413, nothing stored), and a slow client holds neither a worker thread nor a database
connection. `store.artifacts.store_artifact` then stores the spooled file in a worker thread."""

import re
import tempfile
from collections.abc import AsyncIterator
from urllib.parse import quote

import anyio
import anyio.to_thread
from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from sqlalchemy.orm import Session, sessionmaker

from squeezer.api.errors import ProblemError, not_found
from squeezer.api.limits import decimal
from squeezer.api.metrics import UPLOAD_BYTES
from squeezer.store.artifacts import (
    READ_CHUNK_BYTES,
    QuotaExceeded,
    UploadTooLarge,
    delete_artifact,
    get_ready_artifact,
    store_artifact,
    stored_bytes,
)
from squeezer.store.blobs import BlobStore
from squeezer.store.models import UPLOAD_KINDS, Artifact, ArtifactKind

# Form fields are a few words (`kind`); a longer one is not ours.
MAX_FIELD_BYTES = 1024
# Parts of one upload (the file, `kind`, a few a client may add) and the bytes of all its non-file fields together.
MAX_PARTS = 8
MAX_FIELDS_BYTES = 4 * 1024
# What a body may carry besides its file (boundaries, part headers, form fields) when its declared length is compared
# with the upload limit before a byte is read.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
# The lengths of the columns they are stored in (store.models.Artifact).
MAX_CONTENT_TYPE_CHARS = 127
MAX_FILENAME_CHARS = 255
_UNSAFE_FILENAME = re.compile(r"[^A-Za-z0-9._ -]")


class _MultipartStream:
    """Feeds the request body to the parser on demand and hands out the `file` part's bytes."""

    def __init__(self, request: Request, boundary: bytes):
        self._body: AsyncIterator[bytes] = request.stream()
        self._body_done = False
        self.fields: dict[str, str] = {}
        self.filename: str | None = None
        self.content_type = "application/octet-stream"
        self.file_done = False
        self._pending: list[bytes] = []
        self._parts = 0
        self._field_bytes = 0
        self._headers: dict[bytes, bytes] = {}
        self._header_field = b""
        self._header_value = b""
        self._part_name: str | None = None
        self._part_is_file = False
        self._field_value = bytearray()
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": lambda data, start, end: self._append_header("_header_field", data[start:end]),
                "on_header_value": lambda data, start, end: self._append_header("_header_value", data[start:end]),
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )

    def _append_header(self, name: str, data: bytes) -> None:
        value = getattr(self, name) + data
        if len(value) > MAX_FIELD_BYTES:
            raise ProblemError(422, "validation_error", f"a part header is longer than {MAX_FIELD_BYTES} bytes")
        setattr(self, name, value)

    def _on_part_begin(self) -> None:
        self._parts += 1
        if self._parts > MAX_PARTS:
            raise ProblemError(422, "validation_error", f"a multipart body may hold at most {MAX_PARTS} parts")
        self._headers = {}
        self._part_name = None
        self._part_is_file = False
        self._field_value = bytearray()

    def _on_header_end(self) -> None:
        self._headers[self._header_field.strip().lower()] = self._header_value.strip()
        self._header_field = b""
        self._header_value = b""

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._part_name = options.get(b"name", b"").decode("utf-8", "replace")
        if self._part_name == "file":
            if self.filename is not None:
                raise ProblemError(422, "validation_error", "send exactly one `file` part")
            self._part_is_file = True
            self.filename = options.get(b"filename", b"upload").decode("utf-8", "replace")
            content_type = self._headers.get(b"content-type")
            if content_type:
                self.content_type = content_type.decode("latin-1")[:MAX_CONTENT_TYPE_CHARS]

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._part_is_file:
            self._pending.append(bytes(data[start:end]))
        else:
            self._field_value += data[start:end]
            self._field_bytes += end - start
            if self._field_bytes > MAX_FIELDS_BYTES:
                raise ProblemError(
                    422, "validation_error", f"form fields may hold at most {MAX_FIELDS_BYTES} bytes in all"
                )
            if len(self._field_value) > MAX_FIELD_BYTES:
                raise ProblemError(
                    422,
                    "validation_error",
                    f"form field {self._part_name!r} is longer than {MAX_FIELD_BYTES} bytes",
                )

    def _on_part_end(self) -> None:
        if self._part_is_file:
            self.file_done = True
        elif self._part_name:
            self.fields[self._part_name] = self._field_value.decode("utf-8", "replace")

    async def _feed_once(self) -> bool:
        """Parses the next piece of the body; False once the body is exhausted."""
        if self._body_done:
            return False
        try:
            piece = await self._body.__anext__()
        except StopAsyncIteration:
            self._body_done = True
            self._parser.finalize()
            return False
        try:
            self._parser.write(piece)
        except MultipartParseError as error:
            raise ProblemError(400, "bad_request", f"malformed multipart body: {error}") from None
        return True

    async def wait_for_file(self) -> None:
        """Reads until the `file` part's headers arrived (fields sent before it are collected on the way)."""
        while self.filename is None:
            if not await self._feed_once():
                raise ProblemError(
                    422,
                    "validation_error",
                    "the multipart body has no `file` part",
                    errors=[
                        {
                            "loc": ["body", "file"],
                            "msg": "Field required",
                            "type": "missing",
                        }
                    ],
                )

    async def next_file_chunk(self) -> bytes | None:
        while not self._pending:
            if self.file_done or not await self._feed_once():
                return None
        data = b"".join(self._pending)
        self._pending.clear()
        return data

    async def drain(self) -> None:
        """Reads the rest of the body (fields sent after the file)."""
        while await self._feed_once():
            pass


def multipart_boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise ProblemError(
            415,
            "unsupported_media_type",
            "send the file as multipart/form-data with a `file` field",
        )
    return options[b"boundary"]


def _check_kind(kind: str | None) -> str:
    if kind is None:
        return ArtifactKind.MODEL
    if kind not in UPLOAD_KINDS:
        raise ProblemError(
            422,
            "validation_error",
            f"kind must be one of {', '.join(UPLOAD_KINDS)}",
            errors=[
                {
                    "loc": ["body", "kind"],
                    "msg": f"Input should be {' or '.join(UPLOAD_KINDS)}",
                    "type": "literal_error",
                }
            ],
        )
    return kind


class _UploadLimit:
    """The most bytes an upload may have: the upload size limit, or less where the tenant's storage quota leaves
    less (None: no quota); past it, a 413 that says which of the two it hit."""

    def __init__(self, max_bytes: int, quota_left: int | None):
        self.max_bytes = max_bytes
        self.bytes = max_bytes if quota_left is None else min(quota_left, max_bytes)

    def exceeded(self, stored: str = "") -> ProblemError:
        if self.bytes < self.max_bytes:
            return _quota_exceeded(self.bytes, stored)
        return ProblemError(413, "payload_too_large", f"uploads are limited to {self.max_bytes} bytes{stored}")


def _quota_exceeded(left: int, stored: str) -> ProblemError:
    return ProblemError(
        413,
        "storage_quota_exceeded",
        f"this tenant's storage quota leaves {max(left, 0)} bytes; delete artifacts to make room{stored}",
    )


async def receive_upload(
    request: Request,
    session_factory: sessionmaker[Session],
    blobs: BlobStore,
    *,
    tenant: str,
    max_bytes: int,
    quota_left: int | None = None,
    quota: int | None = None,
) -> Artifact:
    """Parses the multipart body as it streams in and stores its `file` part. Raises ProblemError (413/415/422/400).
    `quota_left`: what the tenant's storage quota still allows (None: no quota); past it the 413 says so. `quota`:
    the tenant's whole quota, against which the upload's bytes are reserved atomically before they are stored."""
    limit = _UploadLimit(max_bytes, quota_left)
    declared = request.headers.get("content-length")
    if limit.bytes <= 0 or (declared is not None and decimal(declared, limit.bytes + MULTIPART_OVERHEAD_BYTES) is None):
        # Refuse before reading a byte when the client says up front that the body is too large.
        raise limit.exceeded()
    stream = _MultipartStream(request, multipart_boundary(request))
    # The body is spooled to a local file on the event loop: while the client sends it, no worker thread waits on the
    # network and no database connection is held. Storing (and the quota reservation) starts once it is whole.
    with tempfile.TemporaryFile(prefix="squeezer-upload-") as spool:
        size = await _spool_file(stream, spool, limit)
        kind = _check_kind(stream.fields.get("kind"))
        await anyio.to_thread.run_sync(spool.seek, 0)
        try:
            artifact = await anyio.to_thread.run_sync(
                lambda: store_artifact(
                    session_factory,
                    blobs,
                    tenant=tenant,
                    kind=kind,
                    filename=safe_filename(stream.filename or "upload"),
                    content_type=stream.content_type,
                    chunks=iter(lambda: spool.read(READ_CHUNK_BYTES), b""),
                    max_bytes=limit.bytes,
                    reserve_bytes=size,
                    quota_bytes=quota,
                )
            )
        except UploadTooLarge:
            raise limit.exceeded("; nothing was stored") from None
        except QuotaExceeded as error:
            raise _quota_exceeded(error.left, "; nothing was stored") from None
    UPLOAD_BYTES.inc(artifact.size_bytes)
    return artifact


async def _spool_file(stream: "_MultipartStream", spool, limit: _UploadLimit) -> int:
    """Writes the `file` part to `spool` as it arrives and reads the rest of the body; returns the file's bytes."""
    await stream.wait_for_file()
    size = 0
    while (chunk := await stream.next_file_chunk()) is not None:
        size += len(chunk)
        if size > limit.bytes:
            raise limit.exceeded("; nothing was stored")
        await anyio.to_thread.run_sync(spool.write, chunk)
    await stream.drain()
    return size


def storage_quota_left(session_factory: sessionmaker[Session], tenant: str, quota: int | None) -> int | None:
    """Bytes the tenant may still store (None: no quota). Uploads in flight count once they are ready, so two
    concurrent uploads near the quota may overshoot it by one upload."""
    if quota is None:
        return None
    with session_factory() as session:
        return quota - stored_bytes(session, tenant)


def ready_artifact(session: Session, artifact_id: str, tenant: str) -> Artifact:
    """The tenant's fully stored artifact, else 404 (another tenant's id reads as unknown)."""
    artifact = get_ready_artifact(session, artifact_id, tenant)
    if artifact is None:
        raise not_found("artifact", artifact_id)
    return artifact


def remove_artifact(
    session: Session, session_factory: sessionmaker[Session], blobs: BlobStore, artifact_id: str, tenant: str
) -> None:
    """Deletes the tenant's artifact; the request's session is closed first so the delete's own sessions do not wait
    on it."""
    artifact = ready_artifact(session, artifact_id, tenant)
    session.close()
    delete_artifact(session_factory, blobs, artifact.id)


def safe_filename(name: str) -> str:
    """The last path component, limited to harmless characters (it is echoed in headers and used as a suffix)."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = _UNSAFE_FILENAME.sub("_", base).strip(" .") or "upload"
    return cleaned[-MAX_FILENAME_CHARS:]


def content_disposition(filename: str) -> str:
    """An attachment header that cannot be used for header injection (RFC 6266 with an RFC 5987 UTF-8 form)."""
    ascii_name = safe_filename(filename).replace('"', "")
    return f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"
