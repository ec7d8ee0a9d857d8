"""All service configuration in one pydantic-settings class (environment variables SQUEEZER_*).

Settings reach code one way: an entry point (a `squeezer` command, `python -m squeezer.worker`,
`celery -A squeezer.worker.celery_app`, `api.app.create_app()` without arguments) reads them once with
`get_settings()` and hands that one object down.
`api.app.create_app(settings)` serves it to routes as `api.deps.SettingsDep`; `worker.context.WorkerContext` carries
it through a worker. Nothing below an entry point builds a Settings or reads the environment, so tests and the
embedded mode configure an app or a worker by passing their own object."""

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from squeezer.core.limits import IntakeLimits

# One MiB: per-chunk costs (a row, a query, a read call) stay small next to the bytes moved, and a stream holds little
# memory.
CHUNK_BYTES = 1024 * 1024

_INTAKE = IntakeLimits()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SQUEEZER_", extra="ignore")

    data_dir: Path = Path(".squeezer")
    # Empty means the embedded default: SQLite under data_dir.
    database_url: str = ""
    # Empty means no broker: jobs run on the in-process worker (embedded mode).
    broker_url: str = ""
    # "database" keeps blobs in chunked rows (reachable from any worker); "local" uses data_dir/blobs; "s3" keeps one
    # object per artifact in an S3-compatible bucket (store.s3_blobs), reachable from any worker.
    storage_backend: Literal["database", "local", "s3"] = "database"
    storage_chunk_bytes: int = CHUNK_BYTES
    storage_local_dir: Path | None = None
    # The bucket for storage_backend "s3" (it must exist). An empty endpoint means AWS itself; a self-hosted server
    # (SeaweedFS, MinIO, Ceph) is named by its URL. Credentials empty: boto3's own chain (instance role, ~/.aws).
    s3_endpoint_url: str = ""
    s3_bucket: str = ""
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    # Bytes held per upload before a part is sent (S3's smallest part is 5 MiB): the memory one upload takes.
    s3_part_bytes: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024)
    # Downloads answer 307 to a presigned URL valid this long, so the API carries no bytes; the URL is signed for
    # s3_presign_endpoint_url (the address clients reach the store at) when it differs from s3_endpoint_url.
    s3_presign_downloads: bool = False
    s3_presign_expiry_s: int = Field(60, ge=1, le=3600)
    s3_presign_endpoint_url: str = ""
    max_upload_bytes: int = 4 * 1024**3
    heartbeat_interval_s: float = 10.0
    # A running job whose heartbeat is older than this is considered orphaned by the reaper.
    heartbeat_timeout_s: float = 120.0
    # A queued job not sent to a worker for this long is sent again (the broker lost its message, e.g. Redis restarted
    # without persistence). Unset: 5 heartbeat timeouts, at least 10 s (worker.reaper.stale_queued_s).
    queued_resend_s: float | None = Field(None, gt=0, le=86_400)
    max_attempts: int = 3
    worker_device: Literal["auto", "cpu", "cuda"] = "auto"
    # Jobs that run at once on this worker's machine (one per `squeezer worker` process there): each job's engine
    # gets the machine's usable cores divided by it as compute threads (core.jail.threads_per_job), so that jobs
    # sharing a machine do not thrash (two at torch's default on two cores ran fifteen times slower than one).
    jobs_per_machine: int = Field(1, ge=1, le=256)
    # Require `Authorization: Bearer <api key>` on every /v1 route. Off here so library use and the embedded mode
    # start keyless; `squeezer api` turns it on unless SQUEEZER_AUTH=false, `squeezer serve` only with --auth.
    auth: bool = False
    # Seconds an API process trusts a key it has verified (store.keys.KeyCache): a revoked key stops working within
    # this time; 0 checks the database on every request.
    api_key_cache_s: float = Field(5.0, ge=0, le=300)
    # Per-tenant quotas (None: unlimited). Concurrent jobs are those not yet finished (queued, running, cancelling);
    # stored bytes are the sizes of all the tenant's artifacts, uploads and results alike.
    max_concurrent_jobs_per_tenant: int | None = None
    max_stored_bytes_per_tenant: int | None = None
    # Jobs waiting in the queue per tenant (None: unlimited); submissions past it answer 429
    # `queued_job_quota_exceeded`.
    max_queued_jobs_per_tenant: int | None = None
    # The longest a job may compute (seconds): a job's options.time_limit_s above it is refused (422), one without
    # it gets this; None leaves jobs unbounded.
    max_job_time_limit_s: float | None = None
    # Uploads one tenant may stream at once (429 `upload_quota_exceeded` past it).
    max_concurrent_uploads_per_tenant: int = 4
    # Sizes an upload declares, bounded before anything is allocated (core.limits.IntakeLimits; a refusal names the
    # setting that raises it): model parameters, a .pt's records or a .sqz body, one sample's C×H×W, one sample's
    # activations over all layers, archive members, unpacked archive bytes, one tar extended header, what intake holds
    # of a data set (.npz sizes from the array headers), the pixels an image folder decodes.
    max_model_params: int = _INTAKE.max_model_params
    max_model_bytes: int = _INTAKE.max_model_bytes
    max_input_elements: int = _INTAKE.max_input_elements
    max_activation_elements: int = _INTAKE.max_activation_elements
    max_archive_members: int = _INTAKE.max_archive_members
    max_archive_bytes: int = _INTAKE.max_archive_bytes
    max_archive_header_bytes: int = _INTAKE.max_archive_header_bytes
    max_dataset_bytes: int = _INTAKE.max_dataset_bytes
    max_decoded_pixels: int = _INTAKE.max_decoded_pixels
    # The memory one job's engine process may use on a worker (its address space, the engine's imports included): a
    # submission whose estimated need (core.memory_budget) is larger is refused with 422 naming this setting.
    job_memory_bytes: int = _INTAKE.job_memory_bytes
    # The submission check runs in a disposable child (core.sandbox): its address space (the engine's imports take
    # about 4 GiB of it), CPU seconds and wall-clock seconds; past any of them the submission is refused with 422.
    check_memory_bytes: int = 12 << 30
    check_cpu_s: int = 300
    check_timeout_s: float = 300.0
    # Where the engine runs on untrusted input (a job on a worker, a submission check in the API): "bwrap" jails it
    # (core.jail: no secrets, an unprivileged uid, its own namespaces, no network). "none" runs it as a plain child
    # process, which the worker and the API refuse unless allow_unjailed_engine is also set.
    jail: Literal["bwrap", "none"] = "bwrap"
    allow_unjailed_engine: bool = False
    # Webhooks (worker.webhooks). Receivers' addresses that are loopback, private, link-local, multicast or a cloud's
    # metadata service are refused unless listed here: host names or CIDRs, comma-separated ("hooks.internal,
    # 10.1.0.0/16"). Plain http only with webhook_allow_http.
    webhook_allowed_hosts: str = ""
    webhook_allow_http: bool = False
    # A message is retried with exponential back-off (base delay doubling, with jitter, capped) for this long after
    # its event, then marked failed.
    webhook_retry_for_s: float = Field(86_400.0, ge=0)
    webhook_retry_base_s: float = Field(5.0, gt=0)
    webhook_retry_max_delay_s: float = Field(3600.0, gt=0)
    max_webhooks_per_tenant: int = Field(20, ge=1, le=1000)
    # Logs (store.logging_setup): "text" lines for people, "json" one object per line for a collector.
    log_format: Literal["text", "json"] = "text"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # When set, GET /metrics and a worker's metrics port answer only `Authorization: Bearer <token>`.
    metrics_token: SecretStr = SecretStr("")
    # A Celery worker serves its Prometheus metrics on this port (worker.metrics); 0 serves none.
    worker_metrics_port: int = Field(0, ge=0, le=65535)

    def intake_limits(self) -> IntakeLimits:
        """The upload budgets as the engine takes them (core.limits.using)."""
        return IntakeLimits(**{field: getattr(self, field) for field in IntakeLimits.__dataclass_fields__})

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'squeezer.db').resolve()}"

    @property
    def resolved_storage_dir(self) -> Path:
        return self.storage_local_dir or (self.data_dir / "blobs")


def get_settings(**overrides: Any) -> Settings:
    """The SQUEEZER_* settings as the environment gives them now, with `overrides` on top (an entry point's flags).
    Read on each call, not cached: each `squeezer` command sees its own environment, even when several run in one
    process (tests); the processes that need one object for their lifetime (a worker) keep the one they built."""
    return Settings(**overrides)
