"""The deployment files: the compose file is valid against the compose specification and wires what the service
needs."""

import subprocess
import sys
from pathlib import Path

from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parent.parent


def test_compose_file_validates_against_the_compose_spec():
    checker = Path(sys.executable).parent / "check-jsonschema"
    result = subprocess.run(
        [
            str(checker),
            "--builtin-schema",
            "vendor.compose-spec",
            str(REPO / "docker-compose.yml"),
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_has_the_services_gpu_worker_one_shot_migration_and_healthchecks():
    compose = YAML(typ="safe").load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"api", "worker", "postgres", "redis", "seaweedfs", "migrate"} <= set(services)
    assert services["worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert services["migrate"]["restart"] == "no"
    assert services["api"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    for name in ("api", "worker", "postgres", "redis", "seaweedfs"):
        assert "healthcheck" in services[name], name


def test_compose_keeps_artifacts_in_the_object_store():
    """API and workers share the bucket, not a filesystem: what lets workers run on other machines."""
    compose = YAML(typ="safe").load((REPO / "docker-compose.yml").read_text())
    env = compose["x-squeezer-env"]
    assert env["SQUEEZER_STORAGE_BACKEND"] == "s3"
    assert env["SQUEEZER_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
    assert f"-bucket={env['SQUEEZER_S3_BUCKET']}" in compose["services"]["seaweedfs"]["command"]
    for name in ("api", "worker"):
        assert compose["services"][name]["depends_on"]["seaweedfs"]["condition"] == "service_healthy"


def test_compose_runs_a_webhooks_worker_that_the_cli_starts():
    """Webhooks leave from their own Celery queue: without a consumer of it, no endpoint would hear of any job."""
    compose = YAML(typ="safe").load((REPO / "docker-compose.yml").read_text())
    webhooks = compose["services"]["webhooks"]
    assert webhooks["command"] == ["worker", "--webhooks"]
    assert webhooks["environment"]["SQUEEZER_BROKER_URL"] == compose["x-squeezer-env"]["SQUEEZER_BROKER_URL"]
    squeezer = Path(sys.executable).parent / "squeezer"
    usage = subprocess.run([str(squeezer), "worker", "--help"], check=True, capture_output=True, text=True).stdout
    assert "--webhooks" in usage


def test_dockerfile_is_one_cuda_image_with_the_squeezer_entrypoint():
    dockerfile = (REPO / "Dockerfile").read_text()
    assert dockerfile.startswith("#") and "FROM nvidia/cuda:" in dockerfile
    assert 'ENTRYPOINT ["squeezer"]' in dockerfile and "USER squeezer" in dockerfile


def test_compose_takes_its_passwords_from_the_env_file():
    """No password is a literal of the compose file: each comes from `.env` (`${VAR:?...}` refuses to start without
    it), and `.env.example` names every one of them."""
    text = (REPO / "docker-compose.yml").read_text()
    compose = YAML(typ="safe").load(text)
    services = compose["services"]
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"].startswith("${POSTGRES_PASSWORD:?")
    assert "${REDIS_PASSWORD:?" in " ".join(services["redis"]["command"])
    urls = compose["x-squeezer-env"]
    assert "${POSTGRES_PASSWORD:?" in urls["SQUEEZER_DATABASE_URL"]
    assert "${REDIS_PASSWORD:?" in urls["SQUEEZER_BROKER_URL"]
    assert "squeezer:squeezer@" not in text and "PASSWORD: squeezer" not in text
    assert urls["SQUEEZER_S3_SECRET_ACCESS_KEY"].startswith("${S3_SECRET_ACCESS_KEY:?")
    assert services["seaweedfs"]["environment"]["AWS_SECRET_ACCESS_KEY"].startswith("${S3_SECRET_ACCESS_KEY:?")
    example = (REPO / ".env.example").read_text()
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"} <= {
        line.split("=")[0] for line in example.splitlines() if "=" in line
    }
    assert ".env" in (REPO / ".gitignore").read_text().split()
