"""What a job asks for, as one typed schema read both ways: the API validates a submission with it (as `JobCreate`)
and stores its JSON; the worker validates the stored JSON with it again before running. `JobOptions` is derived from
core.config.CompressConfig, so the engine's config documents the API."""

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from squeezer.core.config import AccuracyTarget, CompressConfig, MethodName, bounded
from squeezer.core.errors import DatasetError, InputError, ModelFormatError
from squeezer.core.methods.registry import summaries

# Bounds of the spec's own fields (the options carry core.config's). Ids are "art_" and 32 hex digits; free-form JSON
# (metadata, architecture arguments) is stored with the job and echoed on every read of it.
MAX_ID_CHARS = 64
MAX_NAME_CHARS = 128
MAX_METADATA_BYTES = 16 * 1024
MAX_ARCH_ARGS_BYTES = 4 * 1024


def json_size(value: Any) -> int:
    """Bytes of `value` as compact UTF-8 JSON, the form the spec is stored and counted in (a tenant's stored bytes)."""
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode())


def _at_most_bytes(limit: int) -> AfterValidator:
    def check(value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = json_size(value)
        except ValueError:
            raise ValueError("must be plain JSON (no NaN or infinite numbers)") from None
        if size > limit:
            raise ValueError(f"is {size:,} bytes as JSON; the limit is {limit:,} bytes")
        return value

    return AfterValidator(check)


ArtifactId = Annotated[
    str, bounded(description="An artifact id from POST /v1/artifacts.", max_length=MAX_ID_CHARS, unit="character")
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ModelArtifactRef(_Strict):
    """An uploaded `.onnx` file or `.zip` of a Squeezer model directory."""

    artifact_id: ArtifactId


class ArchitectureRef(_Strict):
    name: str = bounded(
        description="A registered architecture.", examples=["lenet5"], max_length=MAX_NAME_CHARS, unit="character"
    )
    args: Annotated[dict[str, Any], _at_most_bytes(MAX_ARCH_ARGS_BYTES)] = Field(
        default_factory=dict,
        description=f"The architecture's constructor arguments. Bounds: at most {MAX_ARCH_ARGS_BYTES:,} bytes as JSON.",
        examples=[{"num_classes": 10, "in_channels": 1, "input_size": 8}],
    )


class WeightsArtifactRef(_Strict):
    """Uploaded weights (.safetensors or a weights-only state dict) for a known architecture."""

    weights_artifact_id: ArtifactId
    architecture: ArchitectureRef


class DatasetArtifactRef(_Strict):
    artifact_id: ArtifactId


class SampleDataset(_Strict):
    sample: Literal["digits", "fashion-mnist", "shapes"] = Field(description="shapes is synthetic (segmentation).")


# Everything CompressConfig takes besides the method and the target, which are top-level fields of a job.
JobOptions = create_model(  # type: ignore[call-overload]  # the field annotations are only known at run time
    "JobOptions",
    __config__=ConfigDict(extra="forbid", allow_inf_nan=False),
    __doc__="Engine options (core.config.CompressConfig without `method` and `target`).",
    **{
        name: (field.annotation, field)
        for name, field in CompressConfig.model_fields.items()
        if name not in ("method", "target")
    },
)

# The keys by which a spec names its model and its dataset: a spec that names neither shape is not a job
# (`invalid_job`); one that names an input wrongly (an unknown sample) has a bad input, with the engine's own code.
_REFERENCE_KEYS = {"model": ("artifact_id", "weights_artifact_id"), "dataset": ("artifact_id", "sample")}
_INPUT_ERRORS = {"model": ModelFormatError, "dataset": DatasetError}
# Top-level fields whose errors are errors in the engine's options. Errors across fields (the engine's own rules)
# have no location and count as options too.
_OPTION_FIELDS = ("method", "accuracy_target", "options")


class JobSpec(_Strict):
    """A job: which model, which data, the method, the accuracy budget, the engine's options and free labels."""

    model: ModelArtifactRef | WeightsArtifactRef
    dataset: DatasetArtifactRef | SampleDataset
    method: MethodName = Field(MethodName.LWCT, description=f"Compression method; {summaries()}.")
    accuracy_target: AccuracyTarget = Field(default_factory=AccuracyTarget)
    options: JobOptions = Field(default_factory=JobOptions)
    metadata: Annotated[dict[str, Any], _at_most_bytes(MAX_METADATA_BYTES)] = Field(
        default_factory=dict,
        description=f"Free-form labels, returned unchanged. Bounds: at most {MAX_METADATA_BYTES:,} bytes as compact "
        "UTF-8 JSON.",
    )

    @model_validator(mode="after")
    def _fits_the_engine(self) -> "JobSpec":
        """Rules across fields (a metric must fit the task) answer 422 at submission like any other bad field."""
        try:
            self.compress_config()
        except ValidationError as error:
            problems = (str(e.get("ctx", {}).get("error", e["msg"])) for e in error.errors(include_url=False))
            raise ValueError("; ".join(problems)) from None
        return self

    def compress_config(self) -> CompressConfig:
        return CompressConfig(
            method=self.method,
            target=self.accuracy_target,
            **self.options.model_dump(exclude_unset=True),
        )

    def artifact_ids(self) -> list[str]:
        """The uploads the job reads: its model (or weights) and, unless it uses a sample, its dataset."""
        model = self.model
        ids = [model.artifact_id if isinstance(model, ModelArtifactRef) else model.weights_artifact_id]
        if isinstance(self.dataset, DatasetArtifactRef):
            ids.append(self.dataset.artifact_id)
        return [artifact_id for artifact_id in ids if artifact_id]


def read_spec(stored: dict[str, Any]) -> JobSpec:
    """A stored spec as the API accepted it. A spec that does not validate (written by hand, or by another version)
    fails its job with a stable InputError: `invalid_job` when it names no model or no dataset, the engine's code for
    a wrongly named input, `invalid_options` for its options."""
    try:
        return JobSpec.model_validate(stored)
    except ValidationError as error:
        problems = error.errors(include_url=False)
    fields = {problem["loc"][0] if problem["loc"] else "options" for problem in problems}
    for field, keys in _REFERENCE_KEYS.items():  # the model first: the worker has always fetched it first
        if field in fields:
            named = stored.get(field)
            if not (isinstance(named, dict) and any(key in named for key in keys)):
                raise InputError(
                    f"the job names no {field} ({' or '.join(f'{field}.{key}' for key in keys)})", code="invalid_job"
                )
            raise _INPUT_ERRORS[field](f"invalid {field} {named}: {_explained(problems, field)}")
    if fields - set(_OPTION_FIELDS):
        raise InputError(f"invalid job: {problems}", code="invalid_job")
    raise InputError(f"invalid job options: {problems}", code="invalid_options")


def _explained(problems: list, field: str) -> str:
    """What is wrong with `field`: the errors of the shape it has, not of every shape it might have had (a union's
    other members report their keys as missing or extra)."""
    located = [problem for problem in problems if problem["loc"][:1] == (field,)]
    telling = [problem for problem in located if problem["type"] not in ("missing", "extra_forbidden")] or located
    return "; ".join(dict.fromkeys(problem["msg"] for problem in telling))
