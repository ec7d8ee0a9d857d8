"""All service configuration in one pydantic-settings class (environment variables SQUEEZER_*)."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SQUEEZER_", extra="ignore")

    data_dir: Path = Path(".squeezer")
    # Empty means the embedded default: SQLite under data_dir.
    database_url: str = ""
    # Empty means no broker: jobs run on the in-process worker (embedded mode).
    broker_url: str = ""
    # "database" keeps blobs in chunked rows (reachable from any worker); "local" uses data_dir/blobs.
    storage_backend: Literal["database", "local"] = "database"
    storage_chunk_bytes: int = 1024 * 1024
    storage_local_dir: Path | None = None
    max_upload_bytes: int = 4 * 1024**3
    heartbeat_interval_s: float = 10.0
    # A running job whose heartbeat is older than this is considered orphaned by the reaper.
    heartbeat_timeout_s: float = 120.0
    max_attempts: int = 3
    worker_device: Literal["auto", "cpu", "cuda"] = "auto"
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

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'squeezer.db').resolve()}"

    @property
    def resolved_storage_dir(self) -> Path:
        return self.storage_local_dir or (self.data_dir / "blobs")


@lru_cache
def get_settings() -> Settings:
    return Settings()
