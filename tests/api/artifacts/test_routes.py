import hashlib

from tests.api.conftest import MAX_UPLOAD_BYTES, assert_problem, stored_counts


def test_upload_metadata_download_delete_round_trip(queued_client):
    payload = bytes(range(256)) * 1000  # several storage chunks
    response = queued_client.post(
        "/v1/artifacts",
        files={"file": ("../../etc/weights.onnx", payload, "application/onnx")},
        data={"kind": "model"},
    )
    assert response.status_code == 201, response.text
    artifact = response.json()
    assert artifact["size_bytes"] == len(payload)
    assert artifact["sha256"] == hashlib.sha256(payload).hexdigest()
    assert artifact["filename"] == "weights.onnx" and artifact["kind"] == "model"

    assert queued_client.get(f"/v1/artifacts/{artifact['id']}").json() == artifact
    download = queued_client.get(f"/v1/artifacts/{artifact['id']}/content")
    assert download.content == payload
    assert download.headers["content-length"] == str(len(payload))
    assert download.headers["content-disposition"].startswith('attachment; filename="weights.onnx"')

    assert queued_client.delete(f"/v1/artifacts/{artifact['id']}").status_code == 204
    assert_problem(queued_client.get(f"/v1/artifacts/{artifact['id']}"), 404, "not_found")
    assert stored_counts(queued_client) == (0, 0)


def test_kind_sent_after_the_file_is_honoured(queued_client):
    body = (
        b'--XyZ\r\nContent-Disposition: form-data; name="file"; filename="d.npz"\r\n\r\nabc\r\n'
        b'--XyZ\r\nContent-Disposition: form-data; name="kind"\r\n\r\ndataset\r\n--XyZ--\r\n'
    )
    response = queued_client.post(
        "/v1/artifacts",
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
    )
    assert response.status_code == 201, response.text
    assert response.json()["kind"] == "dataset"
    bad = body.replace(b"dataset", b"malware")
    response = queued_client.post(
        "/v1/artifacts", content=bad, headers={"Content-Type": "multipart/form-data; boundary=XyZ"}
    )
    assert_problem(response, 422, "validation_error")
    assert stored_counts(queued_client)[0] == 1


def test_upload_over_the_limit_is_413_and_nothing_is_stored(queued_client):
    def body():
        # Streamed without a Content-Length, so the limit must be enforced as bytes arrive.
        yield b'--B\r\nContent-Disposition: form-data; name="file"; filename="big.bin"\r\n\r\n'
        for _ in range(MAX_UPLOAD_BYTES // 65536 + 4):
            yield b"\0" * 65536
        yield b"\r\n--B--\r\n"

    response = queued_client.post(
        "/v1/artifacts",
        content=body(),
        headers={"Content-Type": "multipart/form-data; boundary=B"},
    )
    assert_problem(response, 413, "payload_too_large")
    assert stored_counts(queued_client) == (0, 0)


def test_declared_oversized_body_is_refused_up_front(queued_client):
    response = queued_client.post(
        "/v1/artifacts",
        files={"file": ("big.bin", b"\0" * (MAX_UPLOAD_BYTES + 128 * 1024))},
    )
    assert_problem(response, 413, "payload_too_large")
    assert stored_counts(queued_client) == (0, 0)


def test_non_multipart_upload_is_415(queued_client):
    assert_problem(
        queued_client.post(
            "/v1/artifacts",
            content=b"raw",
            headers={"Content-Type": "application/octet-stream"},
        ),
        415,
        "unsupported_media_type",
    )


def test_multipart_without_file_and_bad_kind_are_422(queued_client):
    assert_problem(
        queued_client.post("/v1/artifacts", data={"kind": "model"}, files={"other": ("x", b"1")}),
        422,
        "validation_error",
    )
    assert_problem(
        queued_client.post("/v1/artifacts", data={"kind": "malware"}, files={"file": ("x", b"1")}),
        422,
        "validation_error",
    )
    assert stored_counts(queued_client) == (0, 0)
