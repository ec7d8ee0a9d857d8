import pytest
from fastapi.testclient import TestClient

from squeezer.api.app import create_app
from squeezer.store.settings import Settings
from squeezer.worker.dispatch import CeleryDispatcher
from tests.api.conftest import assert_problem


def test_healthz_and_readyz_with_database_and_broker(queued_client):
    assert queued_client.get("/healthz").json() == {"status": "ok"}
    assert queued_client.get("/readyz").json() == {"status": "ready"}


@pytest.mark.slow
def test_readyz_is_a_503_problem_when_the_database_is_unreachable(tmp_path, redis_url):
    from tests.servers import free_port

    settings = Settings(
        data_dir=tmp_path,
        database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none",
    )
    with TestClient(
        create_app(settings, dispatcher=CeleryDispatcher(redis_url)),
        raise_server_exceptions=False,
    ) as client:
        assert client.get("/healthz").status_code == 200
        assert_problem(client.get("/readyz"), 503, "service_unavailable")
        outage = client.get("/v1/jobs/job_x")
        assert_problem(outage, 503, "service_unavailable")
        assert outage.headers["retry-after"] and "Traceback" not in outage.text


def test_readyz_is_a_503_problem_when_the_broker_is_unreachable(api_settings):
    from tests.servers import free_port

    with TestClient(
        create_app(
            api_settings,
            dispatcher=CeleryDispatcher(f"redis://127.0.0.1:{free_port()}/0"),
        )
    ) as client:
        assert_problem(client.get("/readyz"), 503, "service_unavailable")
