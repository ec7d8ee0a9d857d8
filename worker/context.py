"""What a worker process needs to run jobs: its identity, the database, blob storage and its device."""

import os
import socket
import uuid
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from squeezer.core.jail import (
    Jail,
    JailLimits,
    SparePool,
    configured_jail,
    python_command,
    shared_spare_pool,
    thread_environment,
    threads_per_job,
)
from squeezer.store.blobs import BlobStore, make_blob_store
from squeezer.store.db import make_engine, make_session_factory
from squeezer.store.settings import Settings

# What a job's engine interpreter imports before its job arrives: the engine and what every job imports on its way
# (the ONNX runtime it measures with, torch's exporter), about 2 s of a tiny job otherwise. Not the ONNX converter
# (onnx2torch, with torchvision and torch._dynamo): 1.6 s of CPU and 160 MiB that only a job on an ONNX upload uses.
ENGINE_MODULES = ("squeezer.core.pipeline", "onnxruntime", "torch.onnx")


def new_worker_id() -> str:
    """host:pid plus a random suffix, so a restarted process never passes for the dead one."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass
class WorkerContext:
    settings: Settings
    session_factory: sessionmaker[Session]
    blobs: BlobStore
    worker_id: str
    # "auto" | "cpu" | "cuda": the worker's hardware wins over a job's own `device` option unless it is "auto".
    device: str
    # Where jobs' engines run (core.jail); checked when the context is built, so a worker refuses to start without it.
    jail: Jail
    # The next job's jailed engine, started and importing the engine ahead of the job (core.jail_entry); the pool is
    # the process's, so it outlives the context and ends with the process.
    engines: SparePool

    @classmethod
    def from_settings(
        cls, settings: Settings, session_factory: sessionmaker[Session] | None = None, blobs: BlobStore | None = None
    ) -> "WorkerContext":
        session_factory = session_factory or make_session_factory(make_engine(settings.resolved_database_url))
        jail = configured_jail(settings.jail, allow_unjailed=settings.allow_unjailed_engine)
        return cls(
            settings=settings,
            session_factory=session_factory,
            blobs=blobs or make_blob_store(settings, session_factory),
            worker_id=new_worker_id(),
            device=settings.worker_device,
            jail=jail,
            engines=shared_spare_pool(
                jail,
                python_command("squeezer.core.jail_entry", *ENGINE_MODULES),
                JailLimits(memory_bytes=settings.job_memory_bytes),
                env=thread_environment(threads_per_job(settings.jobs_per_machine)),
            ),
        )
