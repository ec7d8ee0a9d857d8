"""Blob storage in an S3-compatible bucket: one object per artifact, so API and workers on any machine share nothing
but the bucket and the database.

An upload goes up as a multipart upload, one part of `part_bytes` at a time (memory holds one part, whatever the
file size); a file smaller than one part is one PUT at commit. Either way the object exists only once it is
complete, and it is complete before store.artifacts marks its row ready. A failed upload aborts its multipart upload
(S3 would otherwise keep the parts, billed and invisible); a process that dies mid-upload leaves one, which the
stale-upload sweep aborts through `delete`."""

from collections.abc import Iterator
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from squeezer.store.blobs import checked_id
from squeezer.store.settings import CHUNK_BYTES, Settings

# Missing objects read as empty, like a missing file or chunk: callers check the size and hash they recorded.
_MISSING = {"NoSuchKey", "404", "NotFound"}


def s3_client(settings: Settings, endpoint_url: str) -> Any:
    """A thread-safe client (the API streams from its thread pool). Checksums only where S3 requires them: the
    trailing-checksum uploads boto3 sends by default are not understood by every S3-compatible server, and the
    artifact row's sha256 already covers the bytes end to end."""
    config = Config(
        region_name=settings.s3_region,
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 4, "mode": "standard"},
        max_pool_connections=32,
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint_url or None,
        aws_access_key_id=settings.s3_access_key_id or None,
        aws_secret_access_key=settings.s3_secret_access_key.get_secret_value() or None,
        config=config,
    )


def blob_key(artifact_id: str) -> str:
    return f"blobs/{checked_id(artifact_id)}"


class _S3BlobWriter:
    def __init__(self, store: "S3BlobStore", key: str):
        self._store = store
        self._key = key
        self._buffer = bytearray()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    def write(self, data: bytes) -> None:
        """Fills the part to exactly part_bytes and hands that buffer to boto3 as it is: no copy of a part."""
        view = memoryview(data)
        while len(view):
            room = self._store.part_bytes - len(self._buffer)
            self._buffer += view[:room]
            view = view[room:]
            if len(self._buffer) == self._store.part_bytes:
                self._send_part()

    def _send_part(self) -> None:
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=self._key)["UploadId"]
        number = len(self._parts) + 1
        body, self._buffer = self._buffer, bytearray()
        etag = client.upload_part(Bucket=bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=body)
        self._parts.append({"PartNumber": number, "ETag": etag["ETag"]})

    def commit(self) -> None:
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            client.put_object(Bucket=bucket, Key=self._key, Body=self._buffer)
        else:
            if self._buffer:
                self._send_part()
            client.complete_multipart_upload(
                Bucket=bucket, Key=self._key, UploadId=self._upload_id, MultipartUpload={"Parts": self._parts}
            )
        self._buffer.clear()

    def abort(self) -> None:
        """Also removes the object: a commit that failed after S3 completed it (its answer lost) leaves one."""
        self._buffer.clear()
        if self._upload_id is not None:
            self._store.abort_upload(self._key, self._upload_id)
        self._store.client.delete_object(Bucket=self._store.bucket, Key=self._key)


class S3BlobStore:
    """Objects `blobs/<artifact id>` in `bucket`. Reads stream the object's body in `chunk_bytes` pieces."""

    def __init__(
        self,
        client: Any,
        bucket: str,
        *,
        chunk_bytes: int = CHUNK_BYTES,
        part_bytes: int = 8 * 1024 * 1024,
        presign_client: Any = None,
        presign_expiry_s: int = 60,
    ):
        self.client = client
        self.bucket = bucket
        self.chunk_bytes = chunk_bytes
        self.part_bytes = part_bytes
        self.presign_client = presign_client
        self.presign_expiry_s = presign_expiry_s

    @classmethod
    def from_settings(cls, settings: Settings) -> "S3BlobStore":
        if not settings.s3_bucket:
            raise ValueError("SQUEEZER_STORAGE_BACKEND=s3 needs SQUEEZER_S3_BUCKET")
        client = s3_client(settings, settings.s3_endpoint_url)
        presign_client = None
        if settings.s3_presign_downloads:
            public = settings.s3_presign_endpoint_url
            presign_client = s3_client(settings, public) if public and public != settings.s3_endpoint_url else client
        return cls(
            client,
            settings.s3_bucket,
            chunk_bytes=settings.storage_chunk_bytes,
            part_bytes=settings.s3_part_bytes,
            presign_client=presign_client,
            presign_expiry_s=settings.s3_presign_expiry_s,
        )

    def open_writer(self, artifact_id: str) -> _S3BlobWriter:
        return _S3BlobWriter(self, blob_key(artifact_id))

    def iter_chunks(self, artifact_id: str, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        if stop is not None and stop <= start:
            return
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": blob_key(artifact_id)}
        if start or stop is not None:
            request["Range"] = f"bytes={start}-{'' if stop is None else stop - 1}"
        try:
            body = self.client.get_object(**request)["Body"]
        except ClientError as error:
            if error.response["Error"]["Code"] in _MISSING | {"InvalidRange"}:
                return
            raise
        with body:
            yield from body.iter_chunks(self.chunk_bytes)

    def delete(self, artifact_id: str) -> None:
        """The object and any multipart upload still open for it (its uploader died)."""
        key = blob_key(artifact_id)
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=key).get("Uploads", [])
        for upload in uploads:
            if upload["Key"] == key:
                self.abort_upload(key, upload["UploadId"])
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
        except ClientError as error:
            if error.response["Error"]["Code"] != "NoSuchUpload":
                raise

    def is_ready(self) -> bool:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except (BotoCoreError, ClientError):
            return False
        return True

    def download_url(self, artifact_id: str, content_type: str, content_disposition: str) -> str | None:
        """A presigned GET that serves the object with the API's own download headers; None when presigning is
        off."""
        if self.presign_client is None:
            return None
        params = {
            "Bucket": self.bucket,
            "Key": blob_key(artifact_id),
            "ResponseContentType": content_type,
            "ResponseContentDisposition": content_disposition,
        }
        return self.presign_client.generate_presigned_url("get_object", Params=params, ExpiresIn=self.presign_expiry_s)
