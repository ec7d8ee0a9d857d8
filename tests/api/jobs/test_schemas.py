"""The job body carries method=auto, the task and the metric to the engine's config, and refuses a metric that
does not fit the task at submission."""

import pydantic
import pytest

from api.jobs.schemas import JobCreate
from store.job_inputs import config_from_spec

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
