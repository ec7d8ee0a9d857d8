"""`squeezer keys` against the configuration `serve --data-dir` and `api` read, and client commands sending the key."""

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from squeezer.api.app import create_app
from squeezer.cli.main import app
from squeezer.cli.service_commands import embedded_app
from squeezer.store.keys import KeyCache
from squeezer.store.settings import Settings
from tests.helpers import ManualClock

runner = CliRunner()


def create(*args: str, env: dict | None = None) -> str:
    result = runner.invoke(app, ["keys", "create", *args], env=env)
    assert result.exit_code == 0, result.output
    return result.stdout.strip().splitlines()[-1]


def test_keys_create_prints_a_working_key_last_and_revoke_stops_it(tmp_path):
    data_dir = tmp_path / "data"
    key = create("--tenant", "acme", "--name", "laptop", "--data-dir", str(data_dir))
    with TestClient(embedded_app(data_dir, auth=True)) as client:
        ttl, clock = client.app.state.settings.api_key_cache_s, ManualClock()
        client.app.state.key_cache = KeyCache(ttl, clock=clock)
        headers = {"Authorization": f"Bearer {key}"}
        assert client.get("/v1/jobs", headers=headers).status_code == 200
        assert client.get("/v1/jobs").status_code == 401

        listed = runner.invoke(app, ["keys", "list", "--tenant", "acme", "--data-dir", str(data_dir)])
        assert listed.exit_code == 0 and "laptop" in listed.stdout and key[:12] in listed.stdout
        header, row = listed.stdout.splitlines()  # not a terminal: tab-separated, nothing cut to a width
        assert header.split("\t") == ["id", "tenant", "name", "prefix", "created", "last used", "revoked"]
        assert row.split("\t")[1:4] == ["acme", "laptop", key[:12] + "…"]
        assert key not in listed.stdout
        key_id = next(word for word in listed.stdout.split() if word.startswith("key_"))

        wrong_tenant = runner.invoke(app, ["keys", "revoke", key_id, "--tenant", "other", "--data-dir", str(data_dir)])
        assert wrong_tenant.exit_code == 2
        revoked = runner.invoke(app, ["keys", "revoke", key_id, "--tenant", "acme", "--data-dir", str(data_dir)])
        assert revoked.exit_code == 0, revoked.output
        # Each API process may answer from its key cache for up to api_key_cache_s after a revocation, never longer.
        clock.advance(ttl)
        assert client.get("/v1/jobs", headers=headers).status_code == 401


def test_keys_create_uses_the_configured_database_and_client_commands_send_the_key(postgres_url, tmp_path, serve_live):
    key = create("--tenant", "acme", env={"SQUEEZER_DATABASE_URL": postgres_url})
    url = serve_live(create_app(Settings(data_dir=tmp_path / "data", database_url=postgres_url, auth=True)))
    refused = runner.invoke(app, ["jobs", "list", "--server", url])
    assert refused.exit_code == 2 and "Unauthorized" in refused.stderr
    listed = runner.invoke(app, ["jobs", "list", "--server", url], env={"SQUEEZER_API_KEY": key})
    assert listed.exit_code == 0, listed.output


@pytest.mark.parametrize("tenant", ["", "a b", "x" * 65, "-lead"])
def test_keys_create_refuses_bad_tenant_names(tenant, tmp_path):
    result = runner.invoke(app, ["keys", "create", "--tenant", tenant, "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "tenant" in result.stderr


def test_serve_refuses_a_public_interface_without_auth(tmp_path):
    result = runner.invoke(app, ["serve", "--host", "0.0.0.0", "--data-dir", str(tmp_path)])
    assert result.exit_code == 2 and "--auth" in result.stderr


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::"])
def test_api_without_keys_refuses_a_public_interface(host, monkeypatch):
    monkeypatch.setenv("SQUEEZER_AUTH", "false")
    result = runner.invoke(app, ["api", "--host", host])
    assert result.exit_code == 2 and "--public-without-auth" in result.stderr
    result = runner.invoke(app, ["api", "--host", host, "--no-auth"])
    assert result.exit_code == 2 and "--public-without-auth" in result.stderr
