from tests.api.conftest import assert_problem


def test_unknown_route_is_a_404_problem(queued_client):
    body = assert_problem(queued_client.get("/v1/nothing-here"), 404, "not_found")
    assert body["instance"] == "/v1/nothing-here"


def test_wrong_method_is_a_405_problem(queued_client):
    assert_problem(queued_client.put("/v1/jobs"), 405, "method_not_allowed")


def test_invalid_body_is_a_422_problem_with_the_field_errors(queued_client):
    body = assert_problem(
        queued_client.post("/v1/jobs", json={"model": {"artifact_id": "x"}, "method": "magic"}),
        422,
        "validation_error",
    )
    locations = {tuple(error["loc"]) for error in body["errors"]}
    assert ("body", "dataset") in locations and ("body", "method") in locations


def test_openapi_has_the_stable_operation_ids_and_problem_responses(queued_client):
    document = queued_client.get("/openapi.json").json()
    operations = {op["operationId"]: op for path in document["paths"].values() for op in path.values()}
    assert set(operations) == {
        "createArtifact",
        "getArtifact",
        "downloadArtifact",
        "deleteArtifact",
        "createJob",
        "listJobs",
        "getJob",
        "listJobEvents",
        "cancelJob",
        "deleteJob",
        "getJobReport",
        "getJobReportHtml",
        "listJobArtifacts",
        "downloadJobArtifact",
        "healthz",
        "readyz",
        "createWebhook",
        "listWebhooks",
        "deleteWebhook",
        "rotateWebhookSecret",
        "listWebhookDeliveries",
    }
    assert "application/problem+json" in operations["getJob"]["responses"]["404"]["content"]
    upload_schema = operations["createArtifact"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert upload_schema["properties"]["file"]["format"] == "binary"
    assert "lwct" in document["components"]["schemas"]["JobOptions"]["properties"]
    assert set(operations["deleteJob"]["responses"]) >= {"204", "404", "409"}
    batch_size = document["components"]["schemas"]["LwctConfig"]["properties"]["batch_size"]
    assert batch_size["maximum"] == 16_384 and "≤ 16,384" in batch_size["description"]
    schemas = document["components"]["schemas"]
    page = operations["listJobs"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"]
    summary = schemas[page.rsplit("/", 1)[1]]["properties"]["data"]["items"]["$ref"]
    assert summary == "#/components/schemas/JobSummary" and "spec" not in schemas["JobSummary"]["properties"]
