"""Event streams under real gunicorn workers: streamed where a worker is free, else a long poll."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from flask_async_request import Job, JobStatus, lifecycle
from flask_async_request.outcomes import Outcome
from flask_async_request.state import get_state
from tests import workers
from tests.integration.conftest import (
    ROOT,
    _environment,
    _load_project,
    free_port,
    wait_for_port,
)

pytestmark = pytest.mark.integration

WORKER_CLASSES = {
    "sync": ["-k", "sync"],
    "gthread": ["-k", "gthread", "--threads", "4"],
    "gevent": ["-k", "gevent"],
}


@pytest.mark.parametrize(("worker_class", "streamed"), [
    ("sync", False), ("gthread", True), ("gevent", True),
])  # fmt: skip
def test_streams_are_held_only_where_a_worker_is_free(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, worker_class: str, streamed: bool
) -> None:
    """gthread and gevent stream a job's events; a sync worker answers the poll's JSON."""
    broker = os.environ.get("FAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/5")
    env = _environment(tmp_path, broker)
    project = _load_project(env, monkeypatch)
    with project.app.app_context():
        project.db.drop_all()
        project.db.create_all()
        job = Job.create_and_enqueue(workers.Echo, "x")
        token, job_id = job.token, job.id
        store = get_state().store()
        claim = lifecycle.claim(store, job_id, timedelta(minutes=1))
        assert claim is not None
        lifecycle.finish(store, job_id, claim.attempt, Outcome(JobStatus.PROCESSED, 200, "done"))
    port = free_port()
    log = tmp_path / "gunicorn.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", *WORKER_CLASSES[worker_class], "-w", "1",
         "-b", f"127.0.0.1:{port}", "tests.integration.project:app"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, log)
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request(
            "GET", f"/async_request/job/{token}", headers={"Accept": "text/event-stream"}
        )
        response: Any = connection.getresponse()
        body = response.read().decode()
        connection.close()
    finally:
        server.terminate()
        server.wait(20)
    assert response.status == 200, log.read_text()
    media = response.getheader("Content-Type").split(";")[0]
    if streamed:
        assert media == "text/event-stream"
        assert "event: end\n" in body and '"body":"done"' in body
    else:
        assert media == "application/json"
        assert '"body":"done"' in body.replace(" ", "")
