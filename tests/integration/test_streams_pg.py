"""Event streams on PostgreSQL: progress announced at the write; a real worker's job streamed."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from flask import Flask

from flask_async_request import Job, JobStatus, lifecycle
from flask_async_request.statements import CHANNEL
from flask_async_request.values import utcnow
from tests import workers
from tests.conftest import INTERNALS, PG_DATABASE_URL, add_job, current_db, json_of
from tests.integration.conftest import Stack
from tests.test_streams import STREAM, _events

pytestmark = pytest.mark.integration

#: The test client says it is threaded, so that ``"auto"`` streams.
THREADED = {"wsgi.multithread": True}


def _processing(job: Job) -> int:
    with current_db().engine.begin() as conn:
        conn.execute(
            sa.update(Job).where(Job.id == job.id).values(status=JobStatus.PROCESSING, attempts=1)
        )
    return job.id


def _payloads(listener: psycopg.Connection[Any]) -> list[str]:
    return [n.payload for n in listener.notifies(timeout=0.5, stop_after=10)]


@pytest.fixture
def listener() -> Iterator[psycopg.Connection[Any]]:
    """A connection of the test's own that LISTENs on the jobs' channel."""
    url = PG_DATABASE_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"LISTEN {CHANNEL}")
        yield conn


def test_a_progress_write_announces_itself(pg_app: Flask, listener: Any) -> None:
    """The progress UPDATE sends c<id> in the same statement; an unheld write sends nothing."""
    with pg_app.app_context():
        store = INTERNALS.job_store(pg_app)
        job_id = _processing(add_job())
        assert lifecycle.set_progress(store, job_id, 1, 0.5, "half")
        assert _payloads(listener) == [f"c{job_id}"]
        assert not lifecycle.set_progress(store, job_id, 2, 0.6, "not its attempt")
        assert _payloads(listener) == []
        assert lifecycle.reschedule(store, job_id, 1, utcnow())
        assert _payloads(listener) == [f"c{job_id}"]


def test_a_stream_is_woken_by_the_progress_write(pg_app: Flask) -> None:
    """On PostgreSQL the write's announcement wakes the stream at once, with no poller."""
    with pg_app.app_context():
        store = INTERNALS.job_store(pg_app)
        job_id = _processing(job := add_job())
        response = pg_app.test_client().get(
            f"/async_request/job/{job.token}",
            headers=STREAM,
            environ_overrides=THREADED,
            buffered=False,
        )
        events = _events(response)
        next(events), next(events)
        for step in (0.25, 0.5):
            started = time.monotonic()
            lifecycle.set_progress(store, job_id, 1, step, f"at {step}")
            event = next(events)
            assert event["data"] == {"progress": step, "message": f"at {step}"}
            assert time.monotonic() - started < 0.5


def test_a_real_worker_s_job_streams_to_its_end(stack: Stack) -> None:
    """A celery worker's progress arrives as events; the end is the poll's JSON; resume works."""
    app, _ = stack()
    client = app.test_client()
    with app.app_context():
        token = Job.create_and_enqueue(workers.Steps, 6, 0.3).token
    url = f"/async_request/job/{token}"

    def stream(**headers: str) -> Any:
        return client.get(
            url, headers={**STREAM, **headers}, environ_overrides=THREADED, buffered=False
        )

    first = _events(stream())
    seen: list[dict[str, Any]] = []
    while not any(event.get("event") == "progress" for event in seen):
        seen.append(next(first))
    first.close()  # type: ignore[attr-defined]
    last_id = [event["id"] for event in seen if "id" in event][-1]
    resumed = list(_events(stream(**{"Last-Event-ID": last_id})))
    ids = [event["id"] for event in resumed if "id" in event]
    assert ids[0] == str(int(last_id) + 1)
    assert resumed[1]["data"]["status"] == "processing"
    progress = [e["data"]["progress"] for e in resumed if e.get("event") == "progress"]
    assert progress == sorted(progress) and len(progress) >= 3
    assert progress[-1] == 1.0
    end = resumed[-1]
    assert end["event"] == "end" and end["id"] == "end"
    poll = json_of(client.get(url))
    assert end["data"] == poll
    assert json.loads(poll["response"]["body"]) == {"steps": 6}
    again = stream(**{"Last-Event-ID": "end"})
    assert again.status_code == 204
