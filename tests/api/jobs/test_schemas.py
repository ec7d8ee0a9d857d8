"""The job body carries method=auto, the task and the metric to the engine's config, and refuses a metric that
does not fit the task at submission; every field of it is bounded."""

import pydantic
import pytest

from squeezer.api.jobs.schemas import JobCreate
from squeezer.store.job_inputs import config_from_spec
from squeezer.store.job_spec import MAX_METADATA_BYTES, json_size
from tests.api.jobs.bounds import CASES, cases_of, fields

BODY = {"model": {"artifact_id": "art_1"}, "dataset": {"sample": "shapes"}}


def test_task_and_metric_reach_the_engine_through_the_stored_spec():
    body = JobCreate.model_validate(BODY | {"method": "auto", "options": {"task": "segmentation"}})
    config = config_from_spec(body.model_dump(mode="json"), "cpu")
    assert (config.method, config.task, config.target.metric) == ("auto", "segmentation", "pixel_accuracy")
    body = JobCreate.model_validate(BODY | {"accuracy_target": {"metric": "miou"}, "options": {"task": "segmentation"}})
    assert config_from_spec(body.model_dump(mode="json"), "cpu").target.metric == "miou"


def test_a_metric_of_another_task_is_refused():
    with pytest.raises(pydantic.ValidationError, match="does not apply to task 'classification'"):
        JobCreate.model_validate(BODY | {"accuracy_target": {"metric": "miou"}})


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_each_bound_admits_its_limit_and_refuses_past_it_naming_the_field_and_bound(case):
    JobCreate.model_validate(case.body(case.at))
    with pytest.raises(pydantic.ValidationError) as refused:
        JobCreate.model_validate(case.body(case.over))
    assert any(case.names(error) for error in refused.value.errors()), (case.name, refused.value.errors())


def test_every_field_of_the_job_is_bounded_and_says_so():
    """A new option without an upper bound (a number, a list, a string, free JSON) fails here, in cases_of; its
    description must state the bound, as core.config.bounded writes it."""
    bounded = 0
    for path, annotation, info in fields(JobCreate):
        if cases_of(path, annotation, info):
            bounded += 1
            assert "Bounds:" in (info.description or ""), path
    assert bounded >= 50
    assert JobCreate.model_json_schema()["properties"]["metadata"]["description"].endswith(
        f"at most {MAX_METADATA_BYTES:,} bytes as compact UTF-8 JSON."
    )


def test_metadata_of_16_kib_is_accepted_and_one_byte_more_refused():
    padding = MAX_METADATA_BYTES - json_size({"k": ""})
    assert json_size({"k": "x" * padding}) == MAX_METADATA_BYTES
    JobCreate.model_validate(BODY | {"metadata": {"k": "x" * padding}})
    with pytest.raises(pydantic.ValidationError, match="16,385 bytes as JSON; the limit is 16,384 bytes"):
        JobCreate.model_validate(BODY | {"metadata": {"k": "x" * (padding + 1)}})
    with pytest.raises(pydantic.ValidationError, match="plain JSON"):
        JobCreate.model_validate(BODY | {"metadata": {"k": float("nan")}})


@pytest.mark.parametrize(
    ("lwct", "named"),
    [
        ({"tighten": True}, "lwct.tighten was removed"),
        ({"group_training": "fixed"}, "group_training=fixed was removed"),
    ],
)
def test_an_option_that_lost_its_experiment_is_refused_by_name(lwct, named):
    with pytest.raises(pydantic.ValidationError, match=named):
        JobCreate.model_validate(BODY | {"method": "lwct", "options": {"lwct": lwct}})


def test_a_spec_stored_with_the_removed_default_still_runs():
    """Specs are stored as full dumps, so those stored while lwct.tighten existed hold its default, false."""
    stored = JobCreate.model_validate(BODY | {"method": "lwct"}).model_dump(mode="json")
    expected = config_from_spec(stored, "cpu").lwct
    stored["options"]["lwct"]["tighten"] = False
    assert config_from_spec(stored, "cpu").lwct == expected
