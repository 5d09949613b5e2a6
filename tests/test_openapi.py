"""The OpenAPI document: served, valid, and what the endpoint really answers."""

from __future__ import annotations

import itertools
import json
import logging
import os
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import schemathesis
import urllib3.response
from click.testing import CliRunner
from flask import Flask
from schemathesis.cli import schemathesis as schemathesis_cli
from schemathesis.hooks import GLOBAL_HOOK_DISPATCHER

from flask_async_request import (
    AsyncRequest,
    InvalidToken,
    Job,
    accepted,
    download_url,
    openapi_document,
)
from flask_async_request.tokens import MAX_TOKEN_LENGTH, TokenVerifier
from tests import workers
from tests.conftest import AppFactory, Internals, add_job, json_of, serving

ACCEPTED = "#/components/responses/AsyncRequestAccepted"


def _document(app: Flask) -> dict[str, Any]:
    response = app.test_client().get("/async_request/openapi.json")
    assert response.status_code == 200
    document: dict[str, Any] = json_of(response)
    return document


def _validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    schema = {
        "$ref": f"#/components/schemas/AsyncRequest{name}",
        **{"components": document["components"]},
    }
    return jsonschema.Draft202012Validator(schema)


def test_document_is_valid_openapi_3_1(app: Flask) -> None:
    """The document parses as OpenAPI 3.1 and names both job paths."""
    document = _document(app)
    assert document["openapi"] == "3.1.0"
    assert set(document["paths"]["/async_request/job"]) == {"get", "delete"}
    assert set(document["paths"]["/async_request/job/{token}"]) == {"parameters", "get", "delete"}
    schemathesis.openapi.from_dict(document)


def test_document_follows_the_configuration(make_app: AppFactory) -> None:
    """Prefix and header name in the document are the app's own."""
    app = make_app(ASYNC_REQUEST_URL_PREFIX="/jobs", ASYNC_REQUEST_HEADER_KEY="Authorization")
    document = json_of(app.test_client().get("/jobs/openapi.json"))
    assert sorted(document["paths"]) == [
        "/jobs/download/{signed}",
        "/jobs/job",
        "/jobs/job/{token}",
        "/jobs/job/{token}/result",
        "/jobs/result",
    ]
    scheme = document["components"]["securitySchemes"]["asyncRequestToken"]
    assert (scheme["type"], scheme["in"], scheme["name"]) == ("apiKey", "header", "Authorization")


def test_the_token_is_a_credential_of_the_real_length(app: Flask) -> None:
    """The header token is a security scheme; the path token has the length the endpoint takes."""
    document = _document(app)
    shared = document["paths"]["/async_request/job"]
    assert "parameters" not in shared
    for method in ("get", "delete"):
        assert shared[method]["security"] == [{"asyncRequestToken": []}]
    token = document["components"]["parameters"]["AsyncRequestToken"]
    assert token["schema"]["maxLength"] == MAX_TOKEN_LENGTH
    client = app.test_client()
    job = add_job()
    longest = job.token + "x" * (MAX_TOKEN_LENGTH - len(job.token))
    assert client.get(f"/async_request/job/{longest}").json == {
        "errors": [{"message": "Invalid token"}]
    }
    assert client.get(f"/async_request/job/{longest}x").status_code == 400


def test_without_job_urls_the_document_has_none(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_TOKEN_IN_URL = False: no job url path, no links to one."""
    app = make_app(ASYNC_REQUEST_TOKEN_IN_URL=False)
    document = json_of(app.test_client().get("/async_request/openapi.json"))
    assert sorted(document["paths"]) == [
        "/async_request/download/{signed}",
        "/async_request/job",
        "/async_request/result",
    ]
    assert "links" not in document["components"]["responses"]["AsyncRequestAccepted"]
    schemathesis.openapi.from_dict(document)


def _headers_of(document: dict[str, Any], path: str, method: str, status: str) -> set[str]:
    response = document["paths"][path][method]["responses"][status]
    name = response["$ref"].rpartition("/")[2]
    return set(document["components"]["responses"][name].get("headers", {}))


def test_every_header_sent_is_documented(app: Flask, client: Any) -> None:
    """Location, Retry-After and Preference-Applied are listed where the endpoint sends them."""
    document = _document(app)
    job = add_job()
    shared = client.get(
        "/async_request/job", headers={"X-JOB-AUTHORIZATION": job.token, "Prefer": "wait=0"}
    )
    own = client.get(f"/async_request/job/{job.token}", headers={"Prefer": "wait=0"})
    sent = {
        ("/async_request/job", "202"): shared,
        ("/async_request/job/{token}", "202"): own,
    }
    for (path, status), response in sent.items():
        assert response.status_code == int(status)
        names = set(response.headers.keys()) - {"Content-Type", "Content-Length"}
        assert names <= _headers_of(document, path, "get", status), names
    assert _headers_of(document, "/async_request/job/{token}", "get", "202") >= {"Location"}
    done = Job.create_and_enqueue(workers.ReturnValue, [200, "x", "text/plain", {"Link": "<a>"}])
    by_header = {"X-JOB-AUTHORIZATION": done.token}
    with app.test_request_context():
        link = download_url(done)
    sent = {
        ("/async_request/result", "200"): client.get("/async_request/result", headers=by_header),
        ("/async_request/job/{token}/result", "200"): client.get(
            f"/async_request/job/{done.token}/result"
        ),
        ("/async_request/result", "206"): client.get(
            "/async_request/result", headers={**by_header, "Range": "bytes=0-0"}
        ),
        ("/async_request/result", "416"): client.get(
            "/async_request/result", headers={**by_header, "Range": "bytes=9-"}
        ),
        ("/async_request/download/{signed}", "200"): client.get(link),
    }
    for (path, status), response in sent.items():
        assert response.status_code == int(status)
        names = set(response.headers.keys()) - {"Content-Type", "Content-Length"}
        assert names <= _headers_of(document, path, "get", status), names
    assert "Location" not in _headers_of(document, "/async_request/job", "get", "202")


def test_an_apps_202_links_to_the_status_operations(app: Flask) -> None:
    """openapi_document(app_document) adds the endpoint; an app's 202 refers to its response."""
    mine = {
        "openapi": "3.1.0",
        "info": {"title": "Reports", "version": "1"},
        "paths": {"/reports": {"post": {"responses": {"202": {"$ref": ACCEPTED}}}}},
        "components": {"schemas": {"Report": {"type": "object"}}},
    }
    merged = openapi_document(mine)
    assert "/async_request/job" not in mine["paths"]
    assert set(merged["paths"]) == {
        "/reports",
        "/async_request/job",
        "/async_request/job/{token}",
        "/async_request/result",
        "/async_request/job/{token}/result",
        "/async_request/download/{signed}",
    }
    assert "Report" in merged["components"]["schemas"]
    links = merged["components"]["responses"]["AsyncRequestAccepted"]["links"]
    assert links["GetJob"] == {
        "operationId": "getJobByUrl",
        "parameters": {"token": "$response.body#/token"},
        "description": links["GetJob"]["description"],
    }
    schemathesis.openapi.from_dict(merged)


def test_an_apps_429_refers_to_the_owner_limits_response(make_app: AppFactory) -> None:
    """An app's operation documents its 429 with the library's response, as it answers it."""
    extension = AsyncRequest()
    extension.identity_loader(lambda: "alice")
    app = make_app(extension=extension, ASYNC_REQUEST_OWNER_RATE=1)
    limited = "#/components/responses/AsyncRequestOwnerLimited"
    mine = {
        "openapi": "3.1.0",
        "info": {"title": "Reports", "version": "1"},
        "paths": {
            "/reports": {
                "post": {"responses": {"202": {"$ref": ACCEPTED}, "429": {"$ref": limited}}}
            }
        },
    }

    @app.post("/reports")
    def report() -> Any:
        return accepted(Job.create_and_enqueue(workers.Echo, 1))

    with app.app_context():
        merged = openapi_document(mine)
    response = merged["components"]["responses"]["AsyncRequestOwnerLimited"]
    assert set(response["headers"]) == {"Retry-After"}
    schemathesis.openapi.from_dict(merged)
    client = app.test_client()
    assert client.post("/reports").status_code == 202
    refused = client.post("/reports")
    assert refused.status_code == 429
    assert refused.headers["Retry-After"].isdigit()
    assert set(json_of(refused)) == {"errors"}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"openapi": "3.0.3", "info": {}, "paths": {}}, "OpenAPI 3.1"),
        ({"openapi": "3.1.0", "paths": {"/async_request/job": {}}}, "already has the path"),
        (
            {"openapi": "3.1.0", "components": {"schemas": {"AsyncRequestErrors": {}}}},
            "rename the app's",
        ),
    ],
)
def test_a_document_that_cannot_take_the_endpoint_is_refused(
    app: Flask, document: dict[str, Any], message: str
) -> None:
    """Another OpenAPI version, a path or a component name of the endpoint's: ValueError."""
    with pytest.raises(ValueError, match=message):
        openapi_document(document)


# The fuzzer ---------------------------------------------------------------------------

#: Operations that take a job's token; a positive case of one gets a real token.
TOKEN_OPERATIONS = {
    "getJob",
    "cancelJob",
    "getJobByUrl",
    "cancelJobByUrl",
    "getJobResult",
    "getJobResultByUrl",
}
#: Operations on a job's result: a positive case gets the token of a job that has one.
RESULT_OPERATIONS = {"getJobResult", "getJobResultByUrl"}
#: The download link's operation: a positive case gets a real link of a processed job.
LINK_OPERATION = "getDownload"


def _fuzzed_app(make_app: AppFactory) -> Flask:
    """An app whose own POST /start answers accepted(job), documented with the endpoint."""
    # No poll is held (Preference-Applied: wait=0), so that the run stays short.
    app = make_app(ASYNC_REQUEST_MAX_WAIT=0)
    started = itertools.count()

    @app.post("/start")
    def start() -> Any:
        # Every other job is left waiting (stored, not published), so that the
        # status operations answer 202 and cancel as often as they answer 200.
        return accepted(_new_job(next(started)))

    @app.get("/openapi.json")
    def api_document() -> Any:
        return openapi_document(APP_DOCUMENT)

    return app


APP_DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "An app that starts jobs", "version": "1"},
    "paths": {
        "/start": {
            "post": {
                "operationId": "start",
                "responses": {"202": {"$ref": ACCEPTED}},
            }
        }
    },
}


def _new_job(number: int) -> Job:
    """A waiting job (even numbers) or one that has run (odd numbers)."""
    if number % 2:
        return Job.create_and_enqueue(workers.Echo, number)
    return add_job(args=[number])


class _RealTokens:
    """A before_call hook: each positive case of a token operation gets a new job's token.

    Negative cases keep the token the fuzzer made up, which the endpoint must
    refuse; positive ones must be accepted, and can only be with a signed token.
    A token a link took from an earlier answer (the stateful phase) is kept.
    """

    def __init__(self, app: Flask, verify_token: TokenVerifier) -> None:
        self.app = app
        self.verify_token = verify_token
        self.created = itertools.count()
        self.cases = {"new": 0, "linked": 0, "generated": 0}

    def __call__(self, context: Any, case: Any, kwargs: Any) -> None:
        operation_id = case.operation.definition.raw.get("operationId")
        if operation_id == LINK_OPERATION:
            self._link(case)
            return
        if operation_id not in TOKEN_OPERATIONS:
            return
        by_url = operation_id.endswith("ByUrl")
        if by_url and self._signed((case.path_parameters or {}).get("token")):
            self.cases["linked"] += 1
            return
        if case.meta is None or case.meta.generation.mode.is_negative:
            self.cases["generated"] += 1
            return
        self.cases["new"] += 1
        with self.app.app_context():
            number = next(self.created)
            if operation_id in RESULT_OPERATIONS:
                # A processed job (an odd number) has a result to download.
                number = number * 2 + 1
            token = _new_job(number).token
        if by_url:
            case.path_parameters = {**(case.path_parameters or {}), "token": token}
        else:
            case.headers = {**(case.headers or {}), "X-JOB-AUTHORIZATION": f"Bearer {token}"}

    def _link(self, case: Any) -> None:
        """A positive case of the download link gets the signed part of a real one."""
        if case.meta is None or case.meta.generation.mode.is_negative:
            self.cases["generated"] += 1
            return
        self.cases["new"] += 1
        with self.app.test_request_context():
            job = _new_job(next(self.created) * 2 + 1)
            signed = download_url(job).rpartition("/")[2]
        case.path_parameters = {**(case.path_parameters or {}), "signed": signed}

    def _signed(self, token: object) -> bool:
        if not isinstance(token, str):
            return False
        with self.app.app_context():
            try:
                self.verify_token(token)
            except InvalidToken:
                return False
        return True


def test_endpoint_conforms_to_its_document(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, internals: Internals
) -> None:
    """Every phase and check of schemathesis pass with no warning, an app's 202 linked in."""
    if not hasattr(urllib3.response.HTTPResponse, "read1"):
        # The document's event streams are read with urllib3's read1, which came with
        # 2.3; the lowest releases' step has the urllib3 its lowest boto3 allows.
        pytest.skip("schemathesis reads event streams with urllib3 2.3 or later")
    # The fuzzer keeps a cache of what it found in the working directory; each
    # run starts afresh, and leaves nothing in the checkout.
    monkeypatch.chdir(tmp_path)
    app = _fuzzed_app(make_app)
    tokens = _RealTokens(app, internals.verify_token(app))
    hook = schemathesis.hook("before_call")(tokens)
    path = tmp_path / "report.json"
    # The server's access log would fill the fuzzer's output.
    access_log = logging.getLogger("werkzeug")
    level = access_log.level
    access_log.setLevel(logging.WARNING)
    try:
        with serving(app) as base:
            config = tmp_path / "schemathesis.toml"
            # A range past the end of a result is valid by the document, and
            # answered 416, as RFC 9110 has it (test_downloads checks each answer).
            config.write_text(
                "[[operations]]\n"
                'include-operation-id = ["getJobResult", "getJobResultByUrl", "getDownload"]\n'
                "checks.positive_data_acceptance.expected-statuses ="
                ' ["2xx", "3xx", "404", "409", "416", "5xx"]\n'
            )
            arguments = [
                f"--config-file={config}",
                "run",
                f"{base}/openapi.json",
                "--phases=examples,coverage,fuzzing,stateful",
                "--checks=all",
                # Two checks assume what this protocol does not. ignored_auth takes only
                # 401 or 403 for a refused credential, where the endpoint answers a
                # missing or bad token with 400, the gem's answer (test_status_endpoint
                # checks each refusal). use_after_free takes DELETE to remove what it
                # names, where here it cancels the job, whose cancelled reply is read
                # until the job is purged (test_protocol checks it).
                "--exclude-checks=ignored_auth,use_after_free",
                "--mode=all",
                "--max-examples=30",
                "--workers=1",
                "--report=json",
                f"--report-json-path={path}",
                "--no-color",
            ]
            if os.environ.get("CI"):
                arguments.append("--generation-deterministic")
            result = CliRunner().invoke(schemathesis_cli, arguments)
    finally:
        GLOBAL_HOOK_DISPATCHER.unregister(hook)
        access_log.setLevel(level)
    assert result.exit_code == 0, result.output
    report = json.loads(path.read_text())
    assert {name: phase["status"] for name, phase in report["phases"].items()} == {
        "examples": "success",
        "coverage": "success",
        "fuzzing": "success",
        "stateful": "success",
    }, result.output
    assert report["failures"] == report["errors"] == [], result.output
    assert not any(report["warnings"].values()), result.output
    assert report["operations"]["tested"] == 8
    # Links carried real tokens; of the other cases, about half got one.
    new, generated = tokens.cases["new"], tokens.cases["generated"]
    assert tokens.cases["linked"] > 0, tokens.cases
    assert 0.3 < new / (new + generated) < 0.7, tokens.cases
    print(f"schemathesis: {report['test_cases']['generated']} cases, tokens {tokens.cases}")


def test_the_document_describes_the_event_stream(app: Flask) -> None:
    """Both GETs of a job name text/event-stream, Last-Event-ID and the 204 after the end."""
    document = json_of(app.test_client().get("/async_request/openapi.json"))
    stream = document["components"]["responses"]["AsyncRequestFinishedOrStream"]["content"]
    assert stream["text/event-stream"]["schema"] == {
        "$ref": "#/components/schemas/AsyncRequestEvent"
    }
    event = document["components"]["schemas"]["AsyncRequestEvent"]
    assert event["properties"]["event"]["enum"] == ["status", "progress", "end", "gone"]
    for path in ("/async_request/job", "/async_request/job/{token}"):
        get = document["paths"][path]["get"]
        names = {parameter["$ref"].rsplit("/", 1)[1] for parameter in get["parameters"]}
        assert {"AsyncRequestAccept", "AsyncRequestLastEventId"} <= names
        assert set(get["responses"]) >= {"200", "204"}
