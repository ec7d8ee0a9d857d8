"""A job spec turned into the engine's inputs: the model and data exported from storage into a folder, and the
engine's config. The API's submission check and the worker's run both call `fetch_inputs`, so a job the API accepts
is read by the worker exactly as it was checked.

The engine (core.pipeline, which loads torch) is imported inside the functions: the API loads it only when a job is
submitted, never at start-up."""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from squeezer.core.config import CompressConfig
from squeezer.core.errors import InputError
from squeezer.store.artifacts import export_artifact_to, get_ready_artifact
from squeezer.store.blobs import BlobStore
from squeezer.store.job_spec import DatasetArtifactRef, JobSpec, ModelArtifactRef, read_spec

if TYPE_CHECKING:
    from squeezer.core.pipeline import ModelSource

# A suffix the engine may read a format from; anything else in a user's file name is dropped.
_SUFFIX = re.compile(r"^\.[a-z0-9]{1,12}$")
_DOUBLE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz")
# What a worker's SQUEEZER_WORKER_DEVICE says when it leaves the device to each job's own `device` option.
ANY_DEVICE = "auto"


@dataclass(frozen=True)
class EngineInputs:
    model: "ModelSource"
    # A file (.npz, .zip or .tar of an image folder) or "sample:<name>".
    data: str | Path
    config: CompressConfig


def engine_config(spec: JobSpec, worker_device: str = ANY_DEVICE) -> CompressConfig:
    """The spec's method, target and options as the engine's config. A worker pinned to a device overrides the
    job's own choice: the hardware is the worker's to know."""
    config = spec.compress_config()
    if worker_device != ANY_DEVICE:
        config = config.model_copy(update={"device": worker_device})
    return config


def config_from_spec(stored: dict, worker_device: str) -> CompressConfig:
    """`engine_config` of a stored spec (InputError when it no longer validates)."""
    return engine_config(read_spec(stored), worker_device)


def fetch_inputs(
    spec: JobSpec,
    *,
    tenant: str,
    session_factory: sessionmaker[Session],
    blobs: BlobStore,
    dest_dir: Path,
    worker_device: str = ANY_DEVICE,
) -> EngineInputs:
    """Exports the spec's uploads (of `tenant` only) into `dest_dir` and builds the config. An upload that is gone
    raises InputError `artifact_not_found`."""
    from squeezer.core.pipeline import ModelSource

    def fetch(artifact_id: str, stem: str) -> Path:
        return _export(session_factory, blobs, artifact_id, tenant, dest_dir, stem)

    model_ref = spec.model
    if isinstance(model_ref, ModelArtifactRef):
        # An .onnx file or a .zip of a model directory, handed over as is: the engine opens zips with the same checks
        # (core.intake.archives) at submission and in the worker, so the two never disagree.
        model = ModelSource(path=fetch(model_ref.artifact_id, "model"))
    else:
        architecture = model_ref.architecture
        model = ModelSource(
            path=fetch(model_ref.weights_artifact_id, "weights"),
            architecture=architecture.name,
            arch_args=architecture.args,
        )
    dataset = spec.dataset
    data = (
        fetch(dataset.artifact_id, "dataset") if isinstance(dataset, DatasetArtifactRef) else f"sample:{dataset.sample}"
    )
    return EngineInputs(model=model, data=data, config=engine_config(spec, worker_device))


def _export(
    session_factory: sessionmaker[Session], blobs: BlobStore, artifact_id: str, tenant: str, dest_dir: Path, stem: str
) -> Path:
    """Exports one upload of `tenant` under a name whose extension tells the engine its format."""
    with session_factory() as session:
        artifact = get_ready_artifact(session, artifact_id, tenant=tenant)
    if artifact is None:
        raise InputError(f"artifact {artifact_id} does not exist or was deleted", code="artifact_not_found")
    return export_artifact_to(
        session_factory, blobs, artifact_id, dest_dir / f"{stem}{format_suffix(artifact.filename)}"
    )


def format_suffix(filename: str) -> str:
    """The extension that tells the engine the format (.onnx, .zip, .tar.gz, ...); user file names go no further."""
    name = Path(filename).name.lower()
    for double in _DOUBLE_SUFFIXES:
        if name.endswith(double):
            return double
    suffix = Path(name).suffix
    return suffix if _SUFFIX.match(suffix) else ""
