"""The OpenAPI document: served, valid, and what the endpoint really answers."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

from flask_async_request import Job, JobStatus, accepted
from tests import workers
from tests.conftest import AppFactory, add_job, poll


def _document(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/async_request/openapi.json")
    assert response.status_code == 200
    return response.json


def _validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    schema = {"$ref": f"#/components/schemas/{name}", **{"components": document["components"]}}
    return jsonschema.Draft202012Validator(schema)


def test_document_is_valid_openapi_3_1(app: Flask) -> None:
    """The document parses as OpenAPI 3.1 and names the job path."""
    document = _document(app)
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]["/async_request/job"]) == {"parameters", "get", "delete"}
    schemathesis.openapi.from_dict(document)


def test_document_follows_the_configuration(make_app: AppFactory) -> None:
    """Prefix and header name in the document are the app's own."""
    app = make_app(ASYNC_REQUEST_URL_PREFIX="/jobs", ASYNC_REQUEST_HEADER_KEY="Authorization")
    document = app.test_client().get("/jobs/openapi.json").json
    assert list(document["paths"]) == ["/jobs/job", "/jobs/job/{token}"]
    assert document["paths"]["/jobs/job"]["parameters"][0]["name"] == "Authorization"


def test_real_answers_match_the_schemas(app: Flask, client: Any) -> None:
    """Pending, finished, failed, cancelled and error answers validate against the document."""
    document = _document(app)
    pending = add_job(status=JobStatus.PROCESSING)
    pending.progress, pending.progress_message = 0.3, "working"
    finished = Job.create_and_enqueue(workers.Echo, 1)
    failed = Job.create_and_enqueue(workers.Boom)
    cancel_me = add_job()
    answers = {
        "Pending": [poll(client, pending.token)],
        "Finished": [
            poll(client, finished.token),
            poll(client, failed.token),
            client.delete("/async_request/job", headers={"X-JOB-AUTHORIZATION": cancel_me.token}),
        ],
        "Errors": [
            poll(client, "nonsense"),
            client.delete("/async_request/job", headers={"X-JOB-AUTHORIZATION": finished.token}),
        ],
    }
    for name, responses in answers.items():
        validator = _validator(document, name)
        for response in responses:
            validator.validate(response.json)


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/async_request/job/", 404),
        ("GET", "/async_request/", 404),
        ("GET", "/async_request", 404),
        ("GET", "/async_request/nothing/here", 404),
        ("POST", "/async_request/job", 405),
        ("PUT", "/async_request/job/abc", 405),
        ("PATCH", "/async_request/openapi.json", 405),
        ("GET", "/async_request/static/no-such-file.js", 404),
    ],
)
def test_every_error_under_the_prefix_is_the_envelope(
    client: Any, method: str, path: str, status: int
) -> None:
    """Unknown urls and methods under the prefix answer the JSON envelope, 405 with Allow."""
    response = client.open(path, method=method)
    assert response.status_code == status
    assert response.is_json
    assert response.json["errors"][0]["message"] in ("Not found", "Method not allowed")
    if status == 405:
        assert {"GET", "DELETE"} & set(response.headers["Allow"].split(", "))


def test_the_apps_own_errors_stay_its_own(make_app: AppFactory) -> None:
    """Outside the prefix, 404 and 405 are the app's: its handlers, or Flask's HTML."""
    app = make_app()

    @app.post("/start")
    def start() -> Any:
        return accepted(Job.create_and_enqueue(workers.Echo))

    client = app.test_client()
    assert client.get("/start").status_code == 405
    assert not client.get("/start").is_json
    assert not client.get("/async_requestx").is_json
    assert not client.get("/nothing").is_json


def test_endpoint_conforms_to_its_document(make_app: AppFactory) -> None:
    """Generated requests get documented status codes, headers and bodies; never a 500."""
    app = make_app()
    with app.app_context():
        add_job()
    api = schemathesis.openapi.from_wsgi("/async_request/openapi.json", app)
    operations = [result.ok() for result in api.get_all_operations()]
    assert {op.method.upper() for op in operations} == {"GET", "DELETE"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        def conforms(case: Any) -> None:
            # A token is only valid if signed, which no schema can say: a well-formed
            # but unsigned one is rightly refused (400), so that check does not apply.
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        conforms()
