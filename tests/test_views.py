"""views: the status endpoint's GET and DELETE, Prefer: wait, accepted(), and the OpenAPI view."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import jwt
import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.orm import scoped_session

from flask_async_request import Job, JobStatus, accepted
from flask_async_request.store import JobReply, JobStore
from flask_async_request.views import job_url, openapi_document, preferences, requested_wait
from tests import workers
from tests.conftest import SECRET, AppFactory, add_job, json_of, poll, reload_job


def delete(client: Any, token: str) -> Any:
    return client.delete("/async_request/job", headers={"X-JOB-AUTHORIZATION": f"Bearer {token}"})


def _prefer(client: Any, token: str, prefer: str) -> Any:
    return client.get(
        "/async_request/job",
        headers={"X-JOB-AUTHORIZATION": f"Bearer {token}", "Prefer": prefer},
    )


def _preferences_of(app: Flask, *values: str) -> dict[str, str | None]:
    with app.test_request_context(headers=[("Prefer", value) for value in values]):
        return preferences()


def _wait_of(app: Flask, value: str) -> int | None:
    with app.test_request_context(headers={"Prefer": value}):
        return requested_wait()


# The answers of GET ---------------------------------------------------------------------


def test_pending_answer_has_progress_and_retry_after(
    app: Flask, session: scoped_session[Any], client: Any
) -> None:
    """A 202 carries Retry-After and a body with status, progress and message."""
    job = add_job(status=JobStatus.PROCESSING)
    job.progress, job.progress_message = 0.5, "halfway"
    session.commit()
    response = poll(client, job.token)
    assert response.status_code == 202
    assert response.headers["Retry-After"] == "1"
    assert response.json == {"status": "processing", "progress": 0.5, "message": "halfway"}


def test_retry_after_is_configurable(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_RETRY_AFTER sets the header."""
    app = make_app(ASYNC_REQUEST_RETRY_AFTER=5)
    with app.app_context():
        token = add_job().token
    assert poll(app.test_client(), token).headers["Retry-After"] == "5"


def test_the_shared_url_s_202_has_no_location(app: Flask, client: Any) -> None:
    """A pending poll of the shared url names no Location: the token is in the header."""
    response = poll(client, add_job().token)
    assert response.status_code == 202
    assert "Location" not in response.headers


def test_a_finished_answer_has_no_retry_after(app: Flask, client: Any) -> None:
    """A 200 is the end: no Retry-After, no Location."""
    job = add_job(status=JobStatus.PROCESSED, status_code=201, response="made")
    response = client.get(f"/async_request/job/{job.token}")
    assert response.status_code == 200
    assert json_of(response) == {
        "status": "processed",
        "response": {"status_code": 201, "body": "made"},
    }
    assert "Retry-After" not in response.headers
    assert "Location" not in response.headers


def test_pending_polls_of_the_job_url_repeat_location(app: Flask, client: Any) -> None:
    """A 202 from a job's own url tells where to poll next, as the first 202 did."""
    job = add_job()
    answer = client.get(f"/async_request/job/{job.token}")
    assert answer.status_code == 202
    assert answer.headers["Location"] == f"http://localhost/async_request/job/{job.token}"


def test_the_job_url_can_be_turned_off(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_TOKEN_IN_URL = False: the shared url, and a job url answers 404."""
    app = make_app(ASYNC_REQUEST_TOKEN_IN_URL=False)

    @app.post("/start")
    def start() -> Any:
        return accepted(Job.create_and_enqueue(workers.Echo, 1))

    response = app.test_client().post("/start")
    token = json_of(response)["token"]
    assert response.headers["Location"] == "http://localhost/async_request/job"
    assert app.test_client().get(f"/async_request/job/{token}").status_code == 404
    assert app.test_client().delete(f"/async_request/job/{token}").status_code == 404
    assert poll(app.test_client(), token).status_code == 200


def test_a_bad_token_in_the_job_url_is_400(client: Any) -> None:
    """A forged or oversized token in the path is refused like one in the header."""
    assert client.get("/async_request/job/forged").status_code == 400
    assert client.get("/async_request/job/" + "x" * 5000).status_code == 400
    assert client.delete("/async_request/job/forged").status_code == 400


def test_a_job_url_answers_the_header_s_token_not(app: Flask, client: Any) -> None:
    """On a job's own url the path's token counts; a header's token is not read there."""
    pending, finished = add_job(), add_job(status=JobStatus.PROCESSED, status_code=200)
    response = client.get(
        f"/async_request/job/{pending.token}",
        headers={"X-JOB-AUTHORIZATION": f"Bearer {finished.token}"},
    )
    assert response.status_code == 202


def test_a_row_with_an_unknown_status_answers_409(
    app: Flask, engine: Engine, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A row edited by hand into no status the library knows is 409, the reason in the log."""
    job = add_job()
    with engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE async_request_jobs SET status = 'stuck' WHERE id = :id"),
            {"id": job.id},
        )
    response = poll(client, job.token)
    assert response.status_code == 409
    assert json_of(response) == {"errors": [{"message": "The job's stored row is not valid."}]}
    assert "'stuck'" in caplog.text


def test_database_down_answers_503(tmp_path: Any, make_app: AppFactory) -> None:
    """An unreachable database answers polls and cancels with 503, Retry-After and a JSON error."""
    app = make_app(
        create_tables=False,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/missing-dir/jobs.db",
    )
    with app.app_context():
        token = jwt.encode(
            {"job_id": 1, "jti": "x" * 32, "exp": 4102444800}, SECRET, algorithm="HS256"
        )
    for response in (
        poll(app.test_client(), token),
        app.test_client().delete("/async_request/job", headers={"X-JOB-AUTHORIZATION": token}),
    ):
        assert response.status_code == 503
        assert response.headers["Retry-After"].isdigit()
        assert json_of(response)["errors"][0]["message"].startswith("The job store is unavailable")


def test_a_refused_statement_is_not_answered_as_unavailable(
    app: Flask, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database error that is no lost connection is not hidden behind a 503: it is raised."""

    def refuse(store: JobStore, job_id: int) -> JobReply | None:
        raise sa.exc.ProgrammingError("SELECT", {}, Exception("no such column"))

    monkeypatch.setattr(JobStore, "fetch_reply", refuse)
    with pytest.raises(sa.exc.ProgrammingError):
        poll(client, add_job().token)


# DELETE --------------------------------------------------------------------------------


def test_delete_cancels_a_waiting_job(app: Flask, client: Any) -> None:
    """DELETE answers 200 cancelled with the 499 reply, and the row is cancelled."""
    job = add_job()
    response = delete(client, job.token)
    assert response.status_code == 200
    assert json_of(response) == {
        "status": "cancelled",
        "response": {"status_code": 499, "body": '{"error": "Job cancelled"}'},
    }
    assert reload_job(job.id).status is JobStatus.CANCELLED


def test_delete_on_the_job_url_cancels_too(app: Flask, client: Any) -> None:
    """DELETE on the job's own url cancels the job its path names."""
    job = add_job()
    assert client.delete(f"/async_request/job/{job.token}").status_code == 200
    assert reload_job(job.id).status is JobStatus.CANCELLED


def test_cancel_a_finished_job_is_409(app: Flask, client: Any) -> None:
    """A finished job cannot be cancelled."""
    job = Job.create_and_enqueue(workers.Echo)
    response = delete(client, job.token)
    assert response.status_code == 409
    assert json_of(response)["errors"][0]["message"].startswith("The job has finished already")
    assert reload_job(job.id).status is JobStatus.PROCESSED


def test_cancel_needs_a_valid_token(app: Flask, session: scoped_session[Any], client: Any) -> None:
    """DELETE with a bad token is 400, with a token of a deleted job 404."""
    assert delete(client, "garbage").status_code == 400
    job = add_job()
    token = job.token
    session.delete(job)
    session.commit()
    assert delete(client, token).status_code == 404


# Prefer: wait ---------------------------------------------------------------------------


def test_preferences_by_lowercase_name_with_their_values(app: Flask) -> None:
    """Names are lowercased; a value may be a token or a quoted string, escapes undone."""
    assert _preferences_of(app, 'Respond-Async, WAIT = 5, return="a\\"b, c"') == {
        "respond-async": None,
        "wait": "5",
        "return": 'a"b, c',
    }


def test_preferences_from_several_headers_keep_the_first_instance(app: Flask) -> None:
    """Several Prefer headers are one list; a second instance of a name is ignored."""
    assert _preferences_of(app, "wait=3", "wait=9, handling=strict") == {
        "wait": "3",
        "handling": "strict",
    }


def test_parameters_belong_to_their_preference(app: Flask) -> None:
    """After a semicolon come parameters, not preferences of their own."""
    assert _preferences_of(app, "handling=lenient; wait=2") == {"handling": "lenient"}


def test_elements_outside_the_grammar_are_ignored(app: Flask) -> None:
    """An element that is not a preference is skipped; the others still count."""
    assert _preferences_of(app, "@@@, wait=4, a b") == {"wait": "4"}


def test_an_empty_quoted_value_is_no_value(app: Flask) -> None:
    """x="" is x with no value; wait= with nothing after it is outside the grammar."""
    assert _preferences_of(app, 'wait=, x=""') == {"x": None}


def test_no_prefer_header_is_no_preference(app: Flask) -> None:
    """Without the header there are no preferences and no wait."""
    with app.test_request_context():
        assert preferences() == {}
        assert requested_wait() is None


@pytest.mark.parametrize(("value", "seconds"), [("wait=0", 0), ("wait=7", 7), ('wait="12"', 12)])
def test_requested_wait_is_delta_seconds(app: Flask, value: str, seconds: int) -> None:
    """wait=N with N a non-negative integer is N seconds."""
    assert _wait_of(app, value) == seconds


def test_leading_zeros_do_not_lengthen_a_wait(app: Flask) -> None:
    """Delta-seconds may have leading zeros: 000000000005 is 5 seconds, not past the ceiling."""
    assert _wait_of(app, "wait=000000000005") == 5
    assert _wait_of(app, "wait=" + "0" * 30) == 0


@pytest.mark.parametrize("value", ["wait=99999999999999999999", f"wait={2**31 + 1}"])
def test_a_wait_past_the_ceiling_is_the_ceiling(app: Flask, value: str) -> None:
    """RFC 9111: a delta-seconds longer than 2**31 stands for 2**31."""
    assert _wait_of(app, value) == 2**31


@pytest.mark.parametrize(
    "prefer",
    [
        "wait=1.5",
        "wait=1e3",
        "wait=-1",
        "wait=",
        "wait= 1 2",
        "handling=lenient; wait=2",
        'foo="a, wait=2"',
        "respond-async; wait=2",
        "wait=1.5, wait=2",
    ],
)
def test_a_wait_that_is_not_delta_seconds_is_ignored(
    app: Flask, client: Any, prefer: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """RFC 7240: wait is a non-negative integer, first instance only; anything else is ignored."""
    assert _wait_of(app, prefer) is None
    waits: list[float] = []
    monkeypatch.setattr(
        JobStore, "wait_until_finished", lambda store, job_id, timeout: waits.append(timeout)
    )
    response = _prefer(client, add_job().token, prefer)
    assert response.status_code == 202
    assert "Preference-Applied" not in response.headers
    assert waits == []


@pytest.mark.parametrize("prefer", ["WAIT = 1", 'wait="1"', "return=minimal, wait=1; x=y, wait=9"])
def test_a_wait_preference_in_any_valid_form_is_applied(
    app: Flask, client: Any, prefer: str
) -> None:
    """Names match without regard to case, values may be quoted, parameters are allowed."""
    response = _prefer(client, add_job().token, prefer)
    assert response.headers["Preference-Applied"] == "wait=1"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float]]:
    """The store's waits the status endpoint asks for; each answers the row as it is then."""
    asked: list[tuple[int, float]] = []

    def wait(store: JobStore, job_id: int, timeout: float) -> JobReply | None:
        asked.append((job_id, timeout))
        return store.fetch_reply(job_id)

    monkeypatch.setattr(JobStore, "wait_until_finished", wait)
    return asked


def test_prefer_wait_answers_with_what_the_wait_found(
    app: Flask, engine: Engine, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A long poll answers with the reply the wait ended on: 200 when the job finished meanwhile."""
    job = add_job(status=JobStatus.PROCESSING)

    def finished_meanwhile(store: JobStore, job_id: int, timeout: float) -> JobReply | None:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE async_request_jobs SET status = 'processed', status_code = 200,"
                    " response = 'done' WHERE id = :id"
                ),
                {"id": job_id},
            )
        return store.fetch_reply(job_id)

    monkeypatch.setattr(JobStore, "wait_until_finished", finished_meanwhile)
    response = _prefer(client, job.token, "wait=10")
    assert response.status_code == 200
    assert json_of(response)["response"]["body"] == "done"
    assert response.headers["Preference-Applied"] == "wait=10"


def test_prefer_wait_is_capped(make_app: AppFactory, waits: list[tuple[int, float]]) -> None:
    """The wait is capped by ASYNC_REQUEST_MAX_WAIT; a pending job then answers 202."""
    app = make_app(ASYNC_REQUEST_MAX_WAIT=1)
    with app.app_context():
        job_id, token = (job := add_job()).id, job.token
    response = _prefer(app.test_client(), token, "respond-async, wait=100")
    assert response.status_code == 202
    assert response.headers["Preference-Applied"] == "wait=1"
    assert waits == [(job_id, 1)]


def test_prefer_wait_0_applies_without_waiting(
    app: Flask, client: Any, waits: list[tuple[int, float]]
) -> None:
    """wait=0 is applied, and answered at once: the store is not asked to wait."""
    response = _prefer(client, add_job().token, "wait=0")
    assert response.status_code == 202
    assert response.headers["Preference-Applied"] == "wait=0"
    assert waits == []


def test_a_job_deleted_during_the_wait_is_404(
    app: Flask, client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job purged while the request waited for it is gone, as for a plain GET."""
    monkeypatch.setattr(JobStore, "wait_until_finished", lambda store, job_id, timeout: None)
    response = _prefer(client, add_job().token, "wait=5")
    assert response.status_code == 404
    assert json_of(response) == {"errors": [{"message": "Job not found"}]}


def test_without_prefer_a_poll_does_not_wait(
    app: Flask, client: Any, waits: list[tuple[int, float]]
) -> None:
    """Plain polls answer at once and apply no preference."""
    response = poll(client, add_job().token)
    assert response.status_code == 202
    assert "Preference-Applied" not in response.headers
    assert waits == []


def test_prefer_wait_on_a_finished_job_answers_at_once(
    app: Flask, client: Any, waits: list[tuple[int, float]]
) -> None:
    """A finished job needs no wait."""
    token = Job.create_and_enqueue(workers.Echo).token
    response = _prefer(client, token, "wait=30")
    assert response.status_code == 200
    assert "Preference-Applied" not in response.headers
    assert waits == []


# accepted() and job_url() ------------------------------------------------------------------


def test_accepted_builds_the_202(app: Flask) -> None:
    """accepted(job) answers 202 with token, url, Location and Retry-After."""

    @app.post("/start")
    def start() -> Any:
        return accepted(Job.create_and_enqueue(workers.Echo, 1), kind="echo")

    response = app.test_client().post("/start")
    assert response.status_code == 202
    token = json_of(response)["token"]
    assert json_of(response)["url"] == f"http://localhost/async_request/job/{token}"
    assert json_of(response)["kind"] == "echo"
    assert response.headers["Location"] == json_of(response)["url"]
    assert response.headers["Retry-After"] == "1"
    assert poll(app.test_client(), token).status_code == 200


def test_accepted_returns_body_status_and_headers(make_app: AppFactory) -> None:
    """accepted() is a view's (body, 202, headers), Retry-After from the settings."""
    app = make_app(ASYNC_REQUEST_RETRY_AFTER=7, ASYNC_REQUEST_URL_PREFIX="/jobs")
    with app.test_request_context(base_url="https://api.example.com"):
        job = add_job()
        body, status, headers = accepted(job, extra=[1])
    url = f"https://api.example.com/jobs/job/{job.token}"
    assert (body, status) == ({"token": job.token, "url": url, "extra": [1]}, 202)
    assert headers == {"Location": url, "Retry-After": "7"}


def test_job_url_is_the_shared_url_without_job_urls(make_app: AppFactory) -> None:
    """With ASYNC_REQUEST_TOKEN_IN_URL off, job_url() is the shared endpoint's url."""
    app = make_app(ASYNC_REQUEST_TOKEN_IN_URL=False, ASYNC_REQUEST_URL_PREFIX="/x")
    with app.test_request_context():
        assert job_url(add_job()) == "http://localhost/x/job"


# The OpenAPI view and document ------------------------------------------------------------


def test_the_openapi_view_serves_the_document(make_app: AppFactory) -> None:
    """GET {prefix}/openapi.json answers the document of this app's prefix and header."""
    app = make_app(ASYNC_REQUEST_URL_PREFIX="/jobs", ASYNC_REQUEST_HEADER_KEY="X-Token")
    response = app.test_client().get("/jobs/openapi.json")
    assert response.status_code == 200
    served = json_of(response)
    with app.app_context():
        assert served == openapi_document()
    assert set(served["paths"]) == {
        "/jobs/job",
        "/jobs/job/{token}",
        "/jobs/result",
        "/jobs/job/{token}/result",
        "/jobs/download/{signed}",
    }
    assert served["components"]["securitySchemes"]["asyncRequestToken"]["name"] == "X-Token"


def test_merging_leaves_the_app_s_document_as_it_was(app: Flask) -> None:
    """openapi_document(document) answers a merged copy; the app's document is unchanged."""
    own: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {"title": "t", "version": "1"},
        "paths": {"/reports": {"post": {"responses": {"200": {"description": "ok"}}}}},
    }
    merged = openapi_document(own)
    assert set(merged["paths"]) == {
        "/reports",
        "/async_request/job",
        "/async_request/job/{token}",
        "/async_request/result",
        "/async_request/download/{signed}",
        "/async_request/job/{token}/result",
    }
    assert "AsyncRequestAccepted" in merged["components"]["responses"]
    assert set(own) == {"openapi", "info", "paths"}
    assert set(own["paths"]) == {"/reports"}


def test_merging_twice_accepts_the_same_components(app: Flask) -> None:
    """A document whose component of the library's name is the library's own is accepted."""
    library = openapi_document()
    own = {"openapi": "3.1.1", "components": library["components"]}
    assert openapi_document(own)["components"] == library["components"]


# The blueprint's static files --------------------------------------------------------------


def test_the_module_client_is_served_as_javascript_leaving_mimetypes_alone() -> None:
    """With no system mime.types, the .mjs client is still JavaScript, and the
    process's own table of types is not changed for it."""
    script = """
import mimetypes, sys
# As on a host whose Python and mime.types know no .mjs (Python 3.10 without the file).
mimetypes.init(files=[])
for table in (mimetypes.types_map, mimetypes._db.types_map[True]):
    table.pop(".mjs", None)
before = mimetypes.guess_type("x.mjs")[0]
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_async_request import AsyncRequest
app = Flask("mjs")
app.config.update(SECRET_KEY="k" * 40, SQLALCHEMY_DATABASE_URI="sqlite://")
SQLAlchemy(app)
AsyncRequest(app)
served = app.test_client().get("/async_request/static/async-request.mjs")
print(served.status_code, served.mimetype, before, mimetypes.guess_type("x.mjs")[0])
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["200", "text/javascript", "None", "None"], out.stderr
