"""A job's options per method, through the API: the method enum is the registry's, and options of a method the job
does not run are a 422 naming them."""

from squeezer.api.jobs.schemas import JobCreate
from squeezer.core.config import DropType
from squeezer.core.methods.registry import method, methods
from squeezer.store.job_spec import read_spec
from tests.api.conftest import TINY_OPTIONS, assert_problem, tiny_job

UNUSED_ID = "art_" + "0" * 32


def test_options_of_another_method_are_a_422_naming_them(client):
    job = tiny_job(UNUSED_ID, method="filter", options={**TINY_OPTIONS, "filter": {"levels": [0.3]}})
    body = assert_problem(client.post("/v1/jobs", json=job), 422, "validation_error")
    for option in ("lwct.sparsity", "lwct.prune_epochs", "lwct.max_train_samples"):
        assert option in body["detail"]
    assert "filter.levels" not in body["detail"]


def test_auto_accepts_the_options_of_the_methods_it_runs(client):
    options = {**TINY_OPTIONS, "filter": {"levels": [0.3]}, "int8": {"calibration_samples": 64}}
    response = client.post("/v1/jobs", json=tiny_job(UNUSED_ID, method="auto", options=options))
    # past validation: the spec is fine, the upload it names is what is missing
    assert_problem(response, 422, "artifact_not_found")


def test_the_openapi_enums_are_the_registry_s(client):
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    assert schemas["MethodName"]["enum"] == [str(m.name) for m in methods()]
    assert schemas["DropType"]["enum"] == [str(d) for d in DropType]
    structural = schemas["AutoConfig"]["properties"]["structural"]["items"]["enum"]
    assert structural == [str(name) for name in method("auto").combines if method(name).structural]


def test_a_stored_spec_with_every_method_s_defaults_still_reads():
    """Specs are stored as full dumps: every method's options at their defaults, which change nothing."""
    for name in ("lwct", "filter", "int8"):
        stored = JobCreate.model_validate(tiny_job(UNUSED_ID, method=name, options={})).model_dump(mode="json")
        assert set(stored["options"]) >= {m.name for m in methods()}
        assert read_spec(stored).compress_config().method == name
