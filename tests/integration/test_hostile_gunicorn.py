"""Hostile requests against a real gunicorn with prefork workers: documented 4xx, never a 5xx."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flask_async_request import Job
from flask_async_request.tokens import encode_token
from tests.conftest import Internals, current_db
from tests.integration.conftest import ROOT, _environment, _load_project, free_port, wait_for_port

pytestmark = pytest.mark.integration


@pytest.fixture
def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, int]]:
    """The integration project's app under `gunicorn -w 2`, on PostgreSQL; yields (app, port)."""
    env = _environment(tmp_path, "redis://127.0.0.1:6379/15")
    project = _load_project(env, monkeypatch)
    with project.app.app_context():
        project.db.drop_all()
        project.db.create_all()
    port = free_port()
    log = (tmp_path / "gunicorn.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
         "tests.integration.project:app"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    wait_for_port(port, tmp_path / "gunicorn.log")
    try:
        yield project.app, port
    finally:
        server.terminate()
        server.wait(20)


def _request(port: int, method: str, path: str, body: bytes = b"", /, **headers: str) -> Any:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        return response.status, response.read(), dict(response.getheaders())
    finally:
        connection.close()


def test_hostile_requests_get_4xx_from_gunicorn(
    served: tuple[Any, int], internals: Internals
) -> None:
    """Bad keys, bodies, tokens, preferences and rows answer 4xx through a real server."""
    app, port = served
    json_body = json.dumps({"scale": 2}).encode()
    status, body, _ = _request(
        port, "POST", "/squares/3", json_body,
        **{"Content-Type": "application/json", "Idempotency-Key": "k" * 300},
    )  # fmt: skip
    assert status == 400
    assert "Idempotency-Key" in json.loads(body)["errors"][0]["message"]

    status, body, _ = _request(
        port, "POST", "/squares/3", b"{" + b" " * (2 * 1024 * 1024) + b"}",
        **{"Content-Type": "application/json"},
    )  # fmt: skip
    assert status == 413

    status, body, _ = _request(
        port, "POST", "/squares/3", json_body, **{"Content-Type": "application/json"}
    )
    assert status == 202
    token = json.loads(body)["token"]

    for prefer in ("wait=abc", "wait=0", "respond-async;;;,wait", 'handling=strict; wait="0"'):
        status, _, _ = _request(
            port, "GET", "/async_request/job", **{"X-JOB-AUTHORIZATION": token, "Prefer": prefer}
        )
        assert status == 202

    for bad in ("Bearer", "Bearer a.b.c", "x" * 5000, "Bearer \x7f\x01"):
        for method in ("GET", "DELETE"):
            status, _, _ = _request(
                port, method, "/async_request/job", **{"X-JOB-AUTHORIZATION": bad}
            )
            assert status == 400

    with app.app_context():
        session = current_db().session
        job_id = session.execute(sa.select(Job.id)).scalar_one()
        session.execute(
            sa.text("UPDATE async_request_jobs SET status = 'bogus' WHERE id = :id"), {"id": job_id}
        )
        session.commit()
        uid = session.execute(sa.select(Job.uid)).scalar_one()
        session.commit()
        forged = encode_token(job_id, uid, None, internals.settings(app))
    for method in ("GET", "DELETE"):
        status, body, _ = _request(
            port, method, "/async_request/job", **{"X-JOB-AUTHORIZATION": forged}
        )
        assert status == 409
        assert json.loads(body)["errors"]
