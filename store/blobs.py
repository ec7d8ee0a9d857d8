"""Blob storage for artifact bytes.

DatabaseBlobStore keeps bytes in fixed-size rows of `blob_chunks`, so a worker on another machine needs nothing but
the database; LocalBlobStore keeps one file per artifact for the embedded mode; store.s3_blobs.S3BlobStore keeps one
object per artifact in an S3-compatible bucket. All stream: memory holds at most one chunk (an S3 upload one part),
whatever the file size. Reads take a byte range [start, stop), so downloads can answer HTTP Range requests."""

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session, sessionmaker

from squeezer.store.models import BlobChunk
from squeezer.store.settings import CHUNK_BYTES, Settings

# Rows written between commits: bounds the work lost to a crash without a commit per chunk.
COMMIT_EVERY_CHUNKS = 8
_SAFE_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class BlobWriter(Protocol):
    def write(self, data: bytes) -> None: ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class BlobStore(Protocol):
    def open_writer(self, artifact_id: str) -> BlobWriter: ...

    def iter_chunks(self, artifact_id: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """The bytes [start, stop) (stop None: to the end); nothing for a missing blob."""
        ...

    def delete(self, artifact_id: str) -> None: ...

    def is_ready(self) -> bool:
        """Whether the storage answers (the readiness probe)."""
        ...

    def download_url(self, artifact_id: str, content_type: str, content_disposition: str) -> str | None:
        """A short-lived URL serving the blob without the API, or None to stream it through the API."""
        ...


def checked_id(artifact_id: str) -> str:
    """An artifact id safe as a file name or object key."""
    if not _SAFE_ID.match(artifact_id):
        raise ValueError(f"not an artifact id: {artifact_id!r}")
    return artifact_id


def clipped(chunks: Iterator[bytes], skip: int, length: int | None) -> Iterator[bytes]:
    """`chunks` without their first `skip` bytes, cut after `length` bytes (None: all)."""
    if length is not None and length <= 0:
        return
    for chunk in chunks:
        if skip >= len(chunk):
            skip -= len(chunk)
            continue
        chunk, skip = chunk[skip:] if skip else chunk, 0
        if length is not None:
            if len(chunk) >= length:
                yield chunk[:length]
                return
            length -= len(chunk)
        yield chunk


class _StreamedElsewhere:
    """Backends whose bytes only the API can serve."""

    def download_url(self, artifact_id: str, content_type: str, content_disposition: str) -> str | None:
        return None


class _DatabaseBlobWriter:
    def __init__(self, store: "DatabaseBlobStore", artifact_id: str):
        self._store = store
        self._artifact_id = artifact_id
        self._session: Session = store.session_factory()
        self._buffer = bytearray()
        self._seq = 0

    def write(self, data: bytes) -> None:
        self._buffer += data
        size = self._store.chunk_bytes
        while len(self._buffer) >= size:
            self._insert(bytes(self._buffer[:size]))
            del self._buffer[:size]

    def _insert(self, chunk: bytes) -> None:
        # Core insert, not ORM objects: the session must not keep every chunk alive in its identity map.
        self._session.execute(insert(BlobChunk).values(artifact_id=self._artifact_id, seq=self._seq, data=chunk))
        self._seq += 1
        if self._seq % COMMIT_EVERY_CHUNKS == 0:
            self._session.commit()

    def commit(self) -> None:
        if self._buffer:
            self._insert(bytes(self._buffer))
            self._buffer.clear()
        self._session.commit()
        self._session.close()

    def abort(self) -> None:
        self._buffer.clear()
        self._session.rollback()
        self._session.close()
        self._store.delete(self._artifact_id)


class DatabaseBlobStore(_StreamedElsewhere):
    """Chunks in `blob_chunks` (artifact_id, seq). Reads fetch one chunk per query, so a download holds one chunk."""

    def __init__(self, session_factory: sessionmaker[Session], chunk_bytes: int):
        if chunk_bytes <= 0:
            raise ValueError("chunk_bytes must be positive")
        self.session_factory = session_factory
        self.chunk_bytes = chunk_bytes

    def open_writer(self, artifact_id: str) -> BlobWriter:
        return _DatabaseBlobWriter(self, artifact_id)

    def iter_chunks(self, artifact_id: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """A range starts at the chunk holding `start`: every chunk but the last has the size the blob was written
        with (chunk_bytes then, which a restart may have changed), read from its first row."""
        length = None if stop is None else max(0, stop - start)
        first = skip = 0
        if start:
            with self.session_factory() as session:
                written_chunk = session.scalar(
                    select(func.length(BlobChunk.data)).where(BlobChunk.artifact_id == artifact_id, BlobChunk.seq == 0)
                )
            if not written_chunk:
                return
            first, skip = divmod(start, written_chunk)
        yield from clipped(self._chunks_from(artifact_id, first), skip, length)

    def _chunks_from(self, artifact_id: str, seq: int) -> Iterator[bytes]:
        while True:
            with self.session_factory() as session:
                data = session.scalar(
                    select(BlobChunk.data).where(BlobChunk.artifact_id == artifact_id, BlobChunk.seq == seq)
                )
            if data is None:
                return
            yield bytes(data)
            seq += 1

    def delete(self, artifact_id: str) -> None:
        with self.session_factory() as session:
            session.execute(delete(BlobChunk).where(BlobChunk.artifact_id == artifact_id))
            session.commit()

    def is_ready(self) -> bool:
        """The database is the storage: readiness checks it already."""
        return True


class _LocalBlobWriter:
    def __init__(self, final: Path):
        self._final = final
        self._partial = final.with_name(final.name + ".part")
        self._file = self._partial.open("wb")

    def write(self, data: bytes) -> None:
        self._file.write(data)

    def commit(self) -> None:
        """Durable before it is renamed into place, and the rename durable before the row is marked ready."""
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._partial.replace(self._final)
        directory = os.open(self._final.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def abort(self) -> None:
        self._file.close()
        self._partial.unlink(missing_ok=True)


class LocalBlobStore(_StreamedElsewhere):
    """One file per artifact under `root`; written to `<id>.part` and renamed, so a crash never leaves a short blob."""

    def __init__(self, root: Path, chunk_bytes: int = CHUNK_BYTES):
        self.root = Path(root)
        self.chunk_bytes = chunk_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, artifact_id: str) -> Path:
        return self.root / checked_id(artifact_id)

    def open_writer(self, artifact_id: str) -> BlobWriter:
        return _LocalBlobWriter(self._path(artifact_id))

    def iter_chunks(self, artifact_id: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        path = self._path(artifact_id)
        if not path.exists():
            return
        length = None if stop is None else stop - start
        with path.open("rb") as file:
            file.seek(start)
            yield from clipped(iter(lambda: file.read(self.chunk_bytes), b""), 0, length)

    def delete(self, artifact_id: str) -> None:
        path = self._path(artifact_id)
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".part").unlink(missing_ok=True)

    def is_ready(self) -> bool:
        return self.root.is_dir() and os.access(self.root, os.W_OK)


def make_blob_store(settings: Settings, session_factory: sessionmaker[Session]) -> BlobStore:
    if settings.storage_backend == "local":
        return LocalBlobStore(settings.resolved_storage_dir, settings.storage_chunk_bytes)
    if settings.storage_backend == "s3":
        from squeezer.store.s3_blobs import S3BlobStore  # boto3 is imported only where it is used

        return S3BlobStore.from_settings(settings)
    return DatabaseBlobStore(session_factory, settings.storage_chunk_bytes)
