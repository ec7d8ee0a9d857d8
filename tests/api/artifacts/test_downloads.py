"""Downloads on every storage backend: whole files and RFC 9110 byte ranges through the API; with S3 and presigned
downloads, a 307 to the bucket, which then serves the bytes (ranges too) and the API carries none."""

import hashlib
import os

import httpx
import pytest
from fastapi.testclient import TestClient

from squeezer.api.app import create_app
from squeezer.store.settings import Settings
from squeezer.worker.dispatch import CeleryDispatcher
from tests.api.conftest import assert_problem

PAYLOAD = os.urandom(200_000)  # several 64 KiB storage chunks


def app_client(settings: Settings, redis_url: str) -> TestClient:
    return TestClient(create_app(settings, dispatcher=CeleryDispatcher(redis_url)), raise_server_exceptions=False)


def with_storage(api_settings: Settings, **fields) -> Settings:
    return Settings.model_validate({**api_settings.model_dump(), **fields})


@pytest.fixture(params=["database", "local", "s3"])
def storage_settings(request, api_settings, tmp_path) -> Settings:
    if request.param == "s3":
        return with_storage(api_settings, **request.getfixturevalue("s3_settings"))
    return with_storage(api_settings, storage_backend=request.param, storage_local_dir=tmp_path / "blobs")


def uploaded(client: TestClient, payload: bytes = PAYLOAD) -> dict:
    response = client.post("/v1/artifacts", files={"file": ("w.bin", payload, "application/octet-stream")})
    assert response.status_code == 201, response.text
    return response.json()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=0-9", 0, 10),
        ("bytes=65530-65545", 65530, 65546),  # across a chunk boundary
        ("bytes=199990-", 199990, 200_000),
        ("bytes=-5", 199_995, 200_000),
        ("bytes=100-999999", 100, 200_000),  # past the end: clipped
        ("bytes=-999999", 0, 200_000),
    ],
)
def test_a_range_request_is_a_206_of_those_bytes(storage_settings, redis_url, header, start, stop):
    with app_client(storage_settings, redis_url) as client:
        artifact = uploaded(client)
        response = client.get(f"/v1/artifacts/{artifact['id']}/content", headers={"Range": header})
    assert response.status_code == 206, response.text
    assert response.content == PAYLOAD[start:stop]
    assert response.headers["content-range"] == f"bytes {start}-{stop - 1}/{len(PAYLOAD)}"
    assert response.headers["content-length"] == str(stop - start)


def test_whole_files_ignored_ranges_and_unsatisfiable_ones(storage_settings, redis_url):
    with app_client(storage_settings, redis_url) as client:
        artifact = uploaded(client)
        url = f"/v1/artifacts/{artifact['id']}/content"
        whole = client.get(url)
        assert (whole.status_code, whole.content) == (200, PAYLOAD)
        assert whole.headers["accept-ranges"] == "bytes"
        assert whole.headers["etag"] == f'"{hashlib.sha256(PAYLOAD).hexdigest()}"'
        # Malformed, several ranges, another unit: ignored, the whole file.
        for header in (
            "bytes=9-5",
            "bytes=0-1,5-6",
            "items=0-1",
            "bytes=x-",
            "bytes=٣-".encode(),
            "bytes=" + "9" * 5000 + "-",
        ):
            response = client.get(url, headers={"Range": header})
            assert (response.status_code, len(response.content)) == (200, len(PAYLOAD)), header
        # If-Range: the range only while the file is the one the client has.
        same = client.get(url, headers={"Range": "bytes=0-0", "If-Range": whole.headers["etag"]})
        assert (same.status_code, same.content) == (206, PAYLOAD[:1])
        other = client.get(url, headers={"Range": "bytes=0-0", "If-Range": '"another"'})
        assert (other.status_code, len(other.content)) == (200, len(PAYLOAD))
        for header in ("bytes=200000-", "bytes=-0"):
            refused = client.get(url, headers={"Range": header})
            assert_problem(refused, 416, "range_not_satisfiable")
            assert refused.headers["content-range"] == f"bytes */{len(PAYLOAD)}"


def test_presigned_downloads_redirect_to_the_bucket(api_settings, s3_settings, redis_url):
    settings = with_storage(api_settings, **s3_settings, s3_presign_downloads=True, s3_presign_expiry_s=30)
    with app_client(settings, redis_url) as client:
        artifact = uploaded(client)
        redirect = client.get(f"/v1/artifacts/{artifact['id']}/content", follow_redirects=False)
    assert redirect.status_code == 307 and redirect.content == b""
    assert redirect.headers["cache-control"] == "no-store"
    location = redirect.headers["location"]
    assert location.startswith(f"{s3_settings['s3_endpoint_url']}/{s3_settings['s3_bucket']}/blobs/{artifact['id']}?")
    direct = httpx.get(location)
    assert (direct.status_code, direct.content) == (200, PAYLOAD)
    assert direct.headers["content-disposition"].startswith('attachment; filename="w.bin"')
    ranged = httpx.get(location, headers={"Range": "bytes=10-19"})
    assert (ranged.status_code, ranged.content) == (206, PAYLOAD[10:20])
    # The URL's signature is what opens the object: unsigned, or signed for another object, it is refused.
    assert httpx.get(location.split("?")[0]).status_code == 403
    assert httpx.get(location.replace(artifact["id"], "art_other")).status_code == 403


def test_readyz_checks_the_bucket(api_settings, s3_settings, redis_url):
    with app_client(with_storage(api_settings, **s3_settings), redis_url) as client:
        assert client.get("/readyz").json() == {"status": "ready"}
    missing = with_storage(api_settings, **{**s3_settings, "s3_bucket": "no-such-bucket"})
    with app_client(missing, redis_url) as client:
        body = assert_problem(client.get("/readyz"), 503, "service_unavailable")
    assert "blob storage" in body["detail"]
