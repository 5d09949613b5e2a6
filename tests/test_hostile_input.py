"""Hostile input at every surface answers a documented 4xx or a typed error, never a 500.

One Hypothesis test per surface, at the HTTP layer with Flask's test client;
each has an ``@example`` that reached a 500 (or an exception) before its guard.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, request
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flask_async_request import Job, JobStatus, asynchronous
from flask_async_request.runner import run_job
from flask_async_request.webhooks import (
    ID_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    verify_callback,
)
from tests import workers
from tests.conftest import SECRET, AppFactory, Internals, current_db, json_of

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

#: What a header can carry through WSGI: latin-1 text without line breaks.
header_text = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=400,
)


def _envelope(response: Any) -> None:
    """The JSON error envelope: one or more errors, each with a message."""
    assert response.is_json, response.data[:200]
    errors = response.json["errors"]
    assert errors and all(isinstance(error["message"], str) for error in errors)


def _rows() -> list[tuple[Any, ...]]:
    session = current_db().session
    rows = [tuple(row) for row in session.execute(sa.select(Job.id, Job.status, Job.response))]
    session.commit()
    return rows


@pytest.fixture
def hostile_app(make_app: AppFactory) -> Iterator[Flask]:
    """An app with an @asynchronous view and a hand-written one, as the README shows them."""
    app = make_app(ASYNC_REQUEST_MAX_WAIT=0)

    @app.route("/echo", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
    @asynchronous(max_body_size=4096)
    def echo() -> Any:
        form = {key: value[:50] for key, value in request.form.items()}
        files = {name: len(f.read()) for name, f in request.files.items()}
        parsed = request.get_json(silent=True)
        return {"method": request.method, "form": form, "files": files, "json": parsed}

    @app.post("/reports")
    def start_report() -> Any:
        job = Job.create_and_enqueue(
            workers.Echo,
            idempotency_key=request.headers.get("Idempotency-Key"),
            callback_url=request.args.get("callback"),
        )
        return {"token": job.token}, 202

    with app.app_context():
        yield app


@FUZZ
@given(value=header_text)
@example(value="Bearer " + "x" * 5000)
@example(value="Bearer \x01\x02\xff")
def test_token_header_on_delete(hostile_app: Flask, value: str) -> None:
    """Any token header on DELETE answers 400 or 404 with the envelope, and cancels nothing."""
    before = _rows()
    response = hostile_app.test_client().delete(
        "/async_request/job", headers={"X-JOB-AUTHORIZATION": value}
    )
    assert response.status_code in (400, 404)
    _envelope(response)
    assert _rows() == before


@FUZZ
@given(prefer=header_text)
@example(prefer="wait=99999999999999999999")
@example(prefer='respond-async, wait=-1, wait="5"; handling=lenient')
def test_prefer_header(hostile_app: Flask, prefer: str) -> None:
    """Any Prefer header on a poll answers 202 for a pending job and 200 for a finished one."""
    client = hostile_app.test_client()
    pending = Job(worker="tests.workers:Echo", params={"args": [], "kwargs": {}})
    current_db().session.add(pending)
    current_db().session.commit()
    finished = Job.create_and_enqueue(workers.Echo)
    for job, expected in ((pending, 202), (finished, 200)):
        response = client.get(
            "/async_request/job", headers={"X-JOB-AUTHORIZATION": job.token, "Prefer": prefer}
        )
        assert response.status_code == expected
        assert response.is_json


@FUZZ
@given(key=header_text)
@example(key="k" * 256)
@example(key="k" * 1000)
def test_idempotency_key_header(hostile_app: Flask, key: str) -> None:
    """Any Idempotency-Key answers 202 (a job), 400 (a bad key) or 422 (reused); never 500."""
    client = hostile_app.test_client()
    for path in ("/echo", "/reports"):
        before = len(_rows())
        response = client.post(path, headers={"Idempotency-Key": key})
        assert response.status_code in (202, 400, 422), response.data[:200]
        if response.status_code == 400:
            _envelope(response)
            assert "Idempotency-Key" in json_of(response)["errors"][0]["message"]
            assert len(_rows()) == before
        if len(key) > 255:
            assert response.status_code == 400


content_types = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain; charset=no-such-charset",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=XyZ",
            "multipart/form-data",
            "application/octet-stream",
            "",
        ]
    ),
    header_text,
)


@FUZZ
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]),
    content_type=content_types,
    body=st.binary(max_size=6000),
    query=st.text(max_size=50),
)
@example(method="POST", content_type="application/octet-stream", body=b"x" * 5000, query="")
@example(method="POST", content_type="text/plain; charset=no-such-charset", body=b"\xff", query="")
def test_asynchronous_view_request(
    hostile_app: Flask, method: str, content_type: str, body: bytes, query: str
) -> None:
    """Any request to an @asynchronous view is 202 (then a stored reply or error) or 413."""
    response = hostile_app.test_client().open(
        "/echo",
        method=method,
        data=body,
        headers={"Content-Type": content_type} if content_type else {},
        query_string={"q": query},
    )
    if len(body) > 4096:
        assert response.status_code == 413
        _envelope(response)
        return
    assert response.status_code == 202, response.data[:200]
    job_id = json.loads(base64.urlsafe_b64decode(json_of(response)["token"].split(".")[1] + "=="))[
        "job_id"
    ]
    job = current_db().session.get(Job, job_id)
    assert job is not None
    assert job.status in (JobStatus.PROCESSED, JobStatus.FAILED)
    if job.status is JobStatus.FAILED:
        assert job.response is not None
        assert json.loads(job.response)["error"]


def test_asynchronous_view_multipart_files(hostile_app: Flask) -> None:
    """An upload is stored and replayed: the view sees the same files."""
    from io import BytesIO

    response = hostile_app.test_client().post(
        "/echo",
        data={"note": "hi", "upload": (BytesIO(b"\x00\x01" * 100), "a.bin")},
        content_type="multipart/form-data",
    )
    assert response.status_code == 202
    job = current_db().session.scalars(sa.select(Job)).one()
    assert job.response is not None
    assert json.loads(job.response)["files"] == {"upload": 200}
    assert json.loads(job.response)["form"] == {"note": "hi"}


@FUZZ
@given(url=st.text(max_size=300))
@example(url="ftp://example.com/x")
@example(url="http://" + "a" * 3000)
@example(url="javascript:alert(1)")
def test_callback_url_from_a_client(hostile_app: Flask, url: str) -> None:
    """Any callback url a view passes through answers 202 or 400; never 500."""
    before = len(_rows())
    response = hostile_app.test_client().post("/reports", query_string={"callback": url})
    assert response.status_code in (202, 400), response.data[:200]
    if response.status_code == 400:
        _envelope(response)
        assert len(_rows()) == before


@FUZZ
@given(
    headers=st.dictionaries(
        st.sampled_from([ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER, "Webhook-Signature"])
        | st.text(max_size=20),
        st.text(max_size=200),
        max_size=5,
    ),
    payload=st.binary(max_size=200),
)
@example(
    headers={ID_HEADER: "msg_1", TIMESTAMP_HEADER: "1", SIGNATURE_HEADER: "v1=\u00e9\u00e9"},
    payload=b"{}",
)
@example(
    headers={ID_HEADER: "\u00e9", TIMESTAMP_HEADER: "\u0661\u0662", SIGNATURE_HEADER: "v1,x"},
    payload=b"",
)
def test_callback_headers_at_the_receiver(headers: dict[str, str], payload: bytes) -> None:
    """verify_callback answers a bool for any headers a forger sends; never raises."""
    assert verify_callback(payload, headers, key=SECRET, now=1) is False


statuses = st.sampled_from([s.value for s in JobStatus]) | st.text(max_size=16)
params_text = st.sampled_from(
    ['{"args": [], "kwargs": {}}', "not json", "[]", '{"args": "x"}', '{"kwargs": []}', "null"]
) | st.text(max_size=40)
worker_paths = st.sampled_from(
    ["tests.workers:Echo", "os:system", "tests.workers", "json:loads", "tests.workers:Worker", ""]
) | st.text(max_size=40)


@FUZZ
@given(status=statuses, params=params_text, worker=worker_paths, progress=st.floats())
@example(
    status="bogus", params='{"args": [], "kwargs": {}}', worker="tests.workers:Echo", progress=0.5
)
@example(status="waiting", params="not json", worker="tests.workers:Echo", progress=0.0)
@example(status="waiting", params='{"args": "x"}', worker="tests.workers:Echo", progress=0.0)
@example(status="processing", params="{}", worker="tests.workers:Echo", progress=float("nan"))
def test_rows_edited_by_hand(
    hostile_app: Flask, status: str, params: str, worker: str, progress: float, internals: Internals
) -> None:
    """A row holding anything answers a documented status, and its run fails readably."""
    session = current_db().session
    job_id = session.execute(
        sa.text(
            "INSERT INTO async_request_jobs (uid, worker, params, status, attempts, progress,"
            " due_at, created_at, updated_at) VALUES (:uid, :worker, :params, :status, 0,"
            " :progress, :now, :now, :now) RETURNING id"
        ),
        {
            "uid": "u" * 32,
            "worker": worker,
            "params": params,
            "status": status,
            "progress": progress,
            "now": "2026-01-01 00:00:00",
        },
    ).scalar_one()
    session.commit()
    from flask_async_request.tokens import encode_token

    token = encode_token(job_id, "u" * 32, None, internals.settings(hostile_app))
    try:
        response = hostile_app.test_client().get(
            "/async_request/job", headers={"X-JOB-AUTHORIZATION": token}
        )
        assert response.status_code in (200, 202, 409), response.data[:200]
        if response.status_code == 409:
            _envelope(response)
        else:
            json.loads(response.data)  # strict JSON: no NaN
        if status == "waiting":
            run_job(job_id)
            ended = session.execute(
                sa.select(Job.status, Job.response).where(Job.id == job_id)
            ).one()
            session.commit()
            assert ended.status in (JobStatus.PROCESSED, JobStatus.FAILED)
            if ended.status is JobStatus.FAILED:
                assert json.loads(ended.response)["error"]
    finally:
        session.rollback()
        session.execute(sa.delete(Job).where(Job.id == job_id))
        session.commit()
