"""Every bound of the job schema, found by walking it (JobCreate, whose options derive from core.config), as
request bodies: one value just past each bound and one at it. A field with no upper bound fails the completeness test
instead of being skipped."""

import copy
import enum
import math
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import annotated_types
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from squeezer.api.jobs.schemas import JobCreate
from squeezer.core.config import Normalization
from squeezer.core.methods.registry import MethodName
from squeezer.store.job_spec import (
    MAX_ARCH_ARGS_BYTES,
    MAX_METADATA_BYTES,
    ArchitectureRef,
    DatasetArtifactRef,
    ModelArtifactRef,
    SampleDataset,
    WeightsArtifactRef,
    json_size,
)

BASE_JOB = {"model": {"artifact_id": "art_x"}, "dataset": {"sample": "digits"}}
# Where a union offers several shapes, the valid minimum of each (the others' fields start from {}).
SHAPES: dict[type, dict] = {
    ModelArtifactRef: {"artifact_id": "art_x"},
    WeightsArtifactRef: {"weights_artifact_id": "art_x", "architecture": {"name": "lenet5"}},
    DatasetArtifactRef: {"artifact_id": "art_y"},
    SampleDataset: {"sample": "digits"},
    Normalization: {"mean": [0.5], "std": [0.5]},
    ArchitectureRef: {"name": "lenet5"},
}
# Free-form JSON fields bounded by their size as JSON.
JSON_SIZE_BOUNDS = {("metadata",): MAX_METADATA_BYTES, ("model", "architecture", "args"): MAX_ARCH_ARGS_BYTES}
Step = tuple[str, type | None]  # a field name, and the shape of the union it holds when it holds one


@dataclass(frozen=True)
class BoundCase:
    """A bounded field (`path`, dotted as in a 422's location), its bound (`limit` as a refusal writes it), a value
    past the bound and one at it."""

    path: tuple[Step, ...]
    bound: str
    limit: str
    over: Any
    at: Any

    @property
    def location(self) -> str:
        return ".".join(name for name, _ in self.path)

    @property
    def name(self) -> str:
        return f"{self.location}[{self.bound}]"

    def names(self, error: dict) -> bool:
        """Whether a validation error is this field's (or an item's) and states the bound; its location read past the
        union shapes pydantic names."""
        shapes = {shape.__name__ for shape in SHAPES}
        parts = ".".join(str(part) for part in error["loc"] if part not in shapes and part != "body")
        located = parts == self.location or parts.startswith(self.location + ".")
        return located and self.limit in error["msg"]

    def body(self, value: Any) -> dict:
        body = copy.deepcopy(BASE_JOB)
        node = body
        for name, shape in self.path[:-1]:
            node[name] = copy.deepcopy(SHAPES[shape]) if shape in SHAPES else node.get(name, {})
            node = node[name]
        node[self.path[-1][0]] = value
        names = [name for name, _ in self.path]
        if names[0] == "options" and len(names) > 2 and names[1] in set(MethodName):
            body["method"] = names[1]  # a method's options are refused on a job of another method
        return body


def _members(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [member for member in typing.get_args(annotation) if member is not type(None)]
    return [annotation]


def fields(model: type[BaseModel], prefix: tuple[Step, ...] = ()) -> Iterator[tuple[tuple[Step, ...], Any, FieldInfo]]:
    """(path, annotation, field) of every leaf field of `model`, nested models and union shapes walked."""
    for name, info in model.model_fields.items():
        members = _members(info.annotation)
        models = [member for member in members if isinstance(member, type) and issubclass(member, BaseModel)]
        if models:
            for member in models:
                yield from fields(member, (*prefix, (name, member if len(models) > 1 or member in SHAPES else None)))
        else:
            yield (*prefix, (name, None)), members[0], info


def _written(limit: float) -> str:
    """A bound as pydantic's messages write it (10.0 as 10)."""
    return str(int(limit)) if float(limit).is_integer() else str(limit)


def _past(limit: float, integer: bool, inclusive: bool) -> tuple[Any, Any]:
    """(a value past an upper bound, a value at it)."""
    if integer:
        return (limit + 1, limit) if inclusive else (limit, limit - 1)
    return (math.nextafter(limit, math.inf), limit) if inclusive else (limit, math.nextafter(limit, -math.inf))


def _upper(constraints: list) -> tuple[float, bool] | None:
    for constraint in constraints:
        if isinstance(constraint, annotated_types.Le):
            return constraint.le, True
        if isinstance(constraint, annotated_types.Lt):
            return constraint.lt, False
    return None


def _max_length(constraints: list) -> int | None:
    return next((c.max_length for c in constraints if isinstance(c, annotated_types.MaxLen)), None)


def _item_constraints(annotation: Any) -> tuple[Any, list]:
    (item,) = typing.get_args(annotation)
    if typing.get_origin(item) is typing.Annotated:
        base, *metadata = typing.get_args(item)
        return base, [c for info in metadata for c in getattr(info, "metadata", [info])]
    return item, []


def _valid_item(item: Any, constraints: list) -> Any:
    if typing.get_origin(item) is typing.Literal:
        return typing.get_args(item)[0]
    upper = _upper(constraints)
    return _past(upper[0], item is int, upper[1])[1] if upper else 0.5


def cases_of(path: tuple[Step, ...], annotation: Any, info: FieldInfo) -> list[BoundCase]:
    """The bound cases of one field; [] for a field whose type bounds it (bool, Literal)."""
    origin, constraints = typing.get_origin(annotation), info.metadata
    if annotation in (int, float):
        upper = _upper(constraints)
        assert upper is not None, f"{path} has no upper bound"
        return [BoundCase(path, "max", _written(upper[0]), *_past(upper[0], annotation is int, upper[1]))]
    if annotation is str:
        length = _max_length(constraints)
        assert length is not None, f"{path} has no maximum length"
        return [BoundCase(path, "max_length", str(length), "a" * (length + 1), "a" * length)]
    if origin is list:
        length = _max_length(constraints)
        assert length is not None, f"{path} has no maximum length"
        item, item_constraints = _item_constraints(annotation)
        default = info.get_default(call_default_factory=True)
        valid = default[0] if _is_enum(item) else _valid_item(item, item_constraints)  # an enum's: the default's
        cases = [BoundCase(path, "max_length", str(length), [valid] * (length + 1), [valid] * length)]
        if (upper := _upper(item_constraints)) is not None:
            over, at = _past(upper[0], item is int, upper[1])
            cases.append(BoundCase(path, "item_max", _written(upper[0]), [over], [at]))
        return cases
    if origin is dict:
        names = tuple(name for name, _ in path)
        assert names in JSON_SIZE_BOUNDS, f"{path} has no size bound"
        limit, overhead = JSON_SIZE_BOUNDS[names], json_size({"k": ""})
        over, at = {"k": "x" * (limit - overhead + 1)}, {"k": "x" * (limit - overhead)}
        return [BoundCase(path, "json_bytes", f"{limit:,}", over, at)]
    assert annotation is bool or origin is typing.Literal or _is_enum(annotation), (
        f"{path}: {annotation} is not known to be bounded"
    )
    return []


def _is_enum(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, enum.Enum)


CASES = [case for path, annotation, info in fields(JobCreate) for case in cases_of(path, annotation, info)]
