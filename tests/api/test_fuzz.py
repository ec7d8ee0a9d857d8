"""Contract fuzzing: schemathesis generates requests for every operation of the OpenAPI document, valid and invalid
alike, authenticated with a real API key, against the app on PostgreSQL. No 5xx, and every response (status,
content type, body, headers) must match the document; then each query and path parameter is given hostile values
(digits of other scripts, numbers past any bound, any text) in otherwise valid requests. Bounded (a few examples per
operation and mode) so it stays a quick test; set FUZZ_EXAMPLES for a deeper run."""

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig

from squeezer.api.app import create_app
from squeezer.store.keys import create_key
from squeezer.worker.dispatch import CeleryDispatcher

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


@pytest.fixture
def fuzzed(api_settings, redis_url):
    """(schema, operations, auth headers) of the app with auth on; jobs go to a broker no worker reads, so nothing
    runs behind the fuzzer's back."""
    app = create_app(api_settings.model_copy(update={"auth": True}), dispatcher=CeleryDispatcher(redis_url))
    with app.state.session_factory() as session:
        _, key = create_key(session, "fuzz")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    yield app, [result.ok() for result in schema.get_all_operations()], {"Authorization": f"Bearer {key}"}
    app.state.dispatcher.stop()


@pytest.mark.slow
def test_every_operation_keeps_its_contract(fuzzed):
    app, operations, headers = fuzzed
    cases = {
        (operation.label, mode.value): fuzz_operation(operation, mode, headers)
        for operation in operations
        for mode in modes(operation)
    }
    assert len(operations) == len([op for path in app.openapi()["paths"].values() for op in path])
    print(f"fuzzed {len(operations)} operations with {sum(cases.values())} cases: {cases}")


# What the schema's own generation rarely tries in a query or path value: digits of other scripts (², ٣, ９: str.isdigit
# takes them, int() refuses some), numbers past any bound either way, and any other text.
HOSTILE_VALUES = st.one_of(
    st.text(st.characters(categories=("Nd", "No")), min_size=1, max_size=6),
    st.integers(min_value=2**63 - 1, max_value=10**40).map(str),
    st.integers(min_value=-(10**40), max_value=-1).map(str),
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00/?#"), min_size=1, max_size=80),
)


@pytest.mark.slow
def test_query_and_path_values_in_any_script_or_size_are_4xx_problems(fuzzed):
    """Every query and path parameter of every operation, one at a time, given a hostile value in an otherwise valid
    request: never a 5xx, and every refusal a problem document."""
    _, operations, headers = fuzzed
    tried = 0
    for operation in operations:
        parameters = [("path", p.name) for p in operation.path_parameters] + [
            ("query", p.name) for p in operation.query
        ]
        if not parameters:
            continue

        @given(
            case=operation.as_strategy(generation_mode=GenerationMode.POSITIVE),
            parameter=st.sampled_from(parameters),
            value=HOSTILE_VALUES,
        )
        @settings(
            max_examples=EXAMPLES_PER_OPERATION, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def check(case, parameter, value):
            nonlocal tried
            where, name = parameter
            if where == "path":
                case.path_parameters = {**(case.path_parameters or {}), name: value}
            else:
                case.query = {**(case.query or {}), name: value}
            response = case.call(headers=headers)
            assert response.status_code < 500, (case.operation.label, name, value, response.text)
            if response.status_code >= 400:
                (content_type,) = response.headers["content-type"]  # schemathesis lists each header's values
                assert content_type.startswith("application/problem+json"), response.text
            tried += 1

        check()
    assert tried >= EXAMPLES_PER_OPERATION * 8
