"""SQLAlchemy models shared by the API and the workers. The job row is the truth about a job."""

import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, overload

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from squeezer.store.statuses import JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(moment: datetime) -> datetime: ...
@overload
def as_utc(moment: None) -> None: ...
@overload
def as_utc(moment: datetime | None) -> datetime | None: ...
def as_utc(moment: datetime | None) -> datetime | None:
    """SQLite hands datetimes back without a zone; they were stored as UTC."""
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def new_id(prefix: str) -> str:
    """Sortable-enough, unguessable ids with a readable type prefix (`job_…`, `art_…`)."""
    return f"{prefix}_{uuid.uuid4().hex}"


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


DEFAULT_TENANT = "default"


class ArtifactKind(StrEnum):
    """What a stored file is; the values are the API's `kind` (uploads choose one of UPLOAD_KINDS)."""

    MODEL = "model"
    DATASET = "dataset"
    RESULT = "result"
    CHECKPOINT = "checkpoint"


# The kinds a client may upload; the worker stores the others.
UPLOAD_KINDS = (ArtifactKind.MODEL, ArtifactKind.DATASET)


class WebhookEvent(StrEnum):
    """The events a webhook endpoint subscribes to; the values are the API's contract (`type` in every body)."""

    JOB_QUEUED = "job.queued"
    JOB_RUNNING = "job.running"
    JOB_SUCCEEDED = "job.succeeded"
    JOB_FAILED = "job.failed"
    JOB_CANCELLED = "job.cancelled"
    JOB_PROGRESS = "job.progress"


class DeliveryStatus(StrEnum):
    """A webhook message's state: pending until an attempt succeeds, failed once its retries ran out."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Artifact(Base):
    """A stored file: an upload (model, dataset) or a job result."""

    __tablename__ = "artifacts"
    # The sweeper looks for uploads left "uploading" by a crashed API process.
    __table_args__ = (Index("ix_artifacts_state_created", "state", "created_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("art"))
    tenant: Mapped[str] = mapped_column(String(64), index=True, default=DEFAULT_TENANT)
    kind: Mapped[str] = mapped_column(String(16))  # an ArtifactKind value
    filename: Mapped[str] = mapped_column(String(255))
    content_type: Mapped[str] = mapped_column(String(127), default="application/octet-stream")
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    sha256: Mapped[str | None] = mapped_column(String(64))
    # Rows are inserted as "uploading" and become "ready" only once every byte is stored.
    state: Mapped[str] = mapped_column(String(16), default="uploading")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class BlobChunk(Base):
    """One chunk of an artifact's bytes, for the database blob store (no shared disk needed)."""

    __tablename__ = "blob_chunks"

    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"), primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency_key"),
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        Index("ix_jobs_status_heartbeat", "status", "heartbeat_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    tenant: Mapped[str] = mapped_column(String(64), default=DEFAULT_TENANT)
    # A JobStatus value (stored as its string, the API's contract).
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED, index=True)
    # The validated request (model/dataset references, method, target, options, metadata).
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The spec's size as compact JSON (store.job_spec.json_size): it counts toward the tenant's stored bytes.
    spec_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker_id: Mapped[str | None] = mapped_column(String(255))
    heartbeat_at: Mapped[datetime | None] = mapped_column()
    target_met: Mapped[bool | None] = mapped_column(Boolean)
    # Bumped on every change: the ETag pollers send back in If-None-Match.
    version: Mapped[int] = mapped_column(Integer, default=1)
    # Latest engine checkpoint, stored as an artifact so a worker on another machine can resume.
    checkpoint_artifact_id: Mapped[str | None] = mapped_column(ForeignKey("artifacts.id", ondelete="SET NULL"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # When a message for this job was last sent to the broker: the reaper re-sends jobs queued too long (lost message).
    dispatched_at: Mapped[datetime | None] = mapped_column()
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    duration_s: Mapped[float | None] = mapped_column(Float)
    # The submission's X-Request-ID (api.metrics): the worker's log lines for the job carry it.
    request_id: Mapped[str | None] = mapped_column(String(128))


class JobResult(Base):
    """A named output of a job (model.sqz, model.onnx, model.zip, report.json)."""

    __tablename__ = "job_results"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    artifact_id: Mapped[str] = mapped_column(ForeignKey("artifacts.id", ondelete="CASCADE"))


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    level: Mapped[str] = mapped_column(String(16), default="info")
    stage: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ApiKey(Base):
    """A tenant's API key. Only the SHA-256 of the key is kept: keys are long random strings, not passwords, so a fast
    hash is enough and lets a request find its key with one indexed lookup."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("key"))
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(255), default="")
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the key, shown by `squeezer keys list` so a user can tell keys apart.
    prefix: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()
    last_used_at: Mapped[datetime | None] = mapped_column()


class WebhookEndpoint(Base):
    """A tenant's webhook receiver. The secret signs every message (standardwebhooks) so the worker must be able to
    read it; the API shows it only when it is made (creation, rotation). During a rotation's grace period messages
    carry a second signature made with the previous secret."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("whk"))
    tenant: Mapped[str] = mapped_column(String(64), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    # WebhookEvent values.
    events: Mapped[list[str]] = mapped_column(JSON)
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128))
    previous_secret_until: Mapped[datetime | None] = mapped_column()
    # When the endpoint was last sent a job.progress event: at most one per throttle interval.
    progress_sent_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDelivery(Base):
    """One event for one endpoint (the transactional outbox): inserted in the transaction of the job's transition,
    sent by the workers until it succeeds or its retries run out. Its id is the `webhook-id` of every attempt."""

    __tablename__ = "webhook_deliveries"
    # The senders look for messages due now.
    __table_args__ = (Index("ix_webhook_deliveries_status_next", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("msg"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    event_type: Mapped[str] = mapped_column(String(32))  # a WebhookEvent value
    # The body, {"type", "timestamp", "data"}, as it was when the event happened; every attempt sends these bytes.
    body: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default=DeliveryStatus.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # When the next attempt is due; a sender that takes the message moves it past its own timeout, so a message whose
    # sender died is taken again then.
    next_attempt_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookAttempt(Base):
    """One try at sending a message: the receiver's status code or the error, and how long it took."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True)
    # Listed per endpoint (GET /v1/webhooks/{id}/deliveries).
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"), index=True)
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(255))
    latency_ms: Mapped[float] = mapped_column(Float)
    next_retry_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
