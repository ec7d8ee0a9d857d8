"""Contract fuzzing: schemathesis generates requests for every operation of the OpenAPI document, valid and invalid
alike, authenticated with a real API key, against the app on PostgreSQL. No 5xx, and every response (status,
content type, body, headers) must match the document. Bounded (a few examples per operation and mode) so it stays a
quick test; set FUZZ_EXAMPLES for a deeper run."""

import os

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from api.app import create_app
from store.keys import create_key
from worker.dispatch import CeleryDispatcher

EXAMPLES_PER_OPERATION = int(os.environ.get("FUZZ_EXAMPLES", "12"))
# Two adjustments to schemathesis' defaults, everything else is checked as it comes:
# - schema-valid is not always usable: a job naming an artifact that does not exist is well-formed JSON whose
#   documented answer is a 422 problem (`artifact_not_found`);
# - unknown query parameters are ignored, as HTTP APIs conventionally do, so they are not generated as "invalid";
# - the bearer key is the real one we send (ignored_auth still checks that requests without it are refused).
CONFIG = SchemathesisConfig.from_dict(
    {
        "checks": {
            "positive_data_acceptance": {"expected-statuses": ["2xx", "3xx", "401", "404", "409", "422", "429"]}
        },
        "generation": {"allow-extra-parameters": False, "with-security-parameters": False},
    }
)


def fuzz_operation(operation, mode: GenerationMode, headers: dict[str, str]) -> int:
    """Runs the operation's generated cases through every schemathesis check; returns how many ran."""
    ran = 0

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    def check(case):
        nonlocal ran
        ran += 1
        case.call_and_validate(headers=headers)

    try:
        check()
    except Unsatisfiable:
        # Only in negative mode: inputs that are all free-form strings (an id in the path) have no invalid form.
        assert mode is GenerationMode.NEGATIVE, operation.label
    return ran


def modes(operation) -> list[GenerationMode]:
    """Invalid requests too, for operations that take any input (there is nothing to break in `GET /healthz`)."""
    takes_input = any(
        len(group) for group in (operation.path_parameters, operation.query, operation.headers, operation.body)
    )
    return [GenerationMode.POSITIVE, GenerationMode.NEGATIVE] if takes_input else [GenerationMode.POSITIVE]


def test_every_operation_keeps_its_contract(api_settings, redis_url):
    """Auth on; jobs go to a broker no worker reads, so nothing runs behind the fuzzer's back."""
    app = create_app(api_settings.model_copy(update={"auth": True}), dispatcher=CeleryDispatcher(redis_url))
    with app.state.session_factory() as session:
        _, key = create_key(session, "fuzz")
    headers = {"Authorization": f"Bearer {key}"}
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    operations = [result.ok() for result in schema.get_all_operations()]
    cases = {
        (operation.label, mode.value): fuzz_operation(operation, mode, headers)
        for operation in operations
        for mode in modes(operation)
    }
    assert len(operations) == len([op for path in app.openapi()["paths"].values() for op in path])
    print(f"fuzzed {len(operations)} operations with {sum(cases.values())} cases: {cases}")
    app.state.dispatcher.stop()
