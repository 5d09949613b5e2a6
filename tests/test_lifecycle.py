"""One owner for a job's life: every end announced the same way, and the seams between paths."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import scoped_session

from flask_async_request import Job, JobStatus, signals
from flask_async_request.maintenance import sweep_jobs
from flask_async_request.store import JobStore
from flask_async_request.values import utcnow
from flask_async_request.web import cancel_job
from tests import workers
from tests.conftest import Receiver, add_job, current_db, poll, reload_job


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()


@pytest.fixture
def announced() -> Iterator[list[tuple[str, int]]]:
    """The end signals sent, as (signal name, job id)."""
    seen: list[tuple[str, int]] = []

    def record(name: str) -> Any:
        def receiver(sender: Flask, job_id: int, **extra: Any) -> None:
            seen.append((name, job_id))

        return receiver

    receivers = {
        signal: record(name)
        for name, signal in (
            ("finished", signals.job_finished),
            ("failed", signals.job_failed),
            ("cancelled", signals.job_cancelled),
        )
    }
    for signal, receiver in receivers.items():
        signal.connect(receiver)
    yield seen
    for signal, receiver in receivers.items():
        signal.disconnect(receiver)


def _lost_job(callback_url: str | None = None) -> int:
    """A processing job whose worker is gone: its lease ran out a while ago."""
    job = add_job(status=JobStatus.PROCESSING)
    job.attempts = 1
    job.lease_expires_at = utcnow() - timedelta(seconds=5)
    job.callback_url = callback_url
    current_db().session.commit()
    return job.id


# Every end state announced once, whichever path reaches it --------------------------------


def test_job_failed_by_the_sweeper_is_announced(
    app: Flask, receiver: Receiver, announced: list[tuple[str, int]]
) -> None:
    """A lost job failed by the sweeper sends job_failed and POSTs its callback."""
    job_id = _lost_job(receiver.url)
    assert sweep_jobs().failed == 1
    assert announced == [("failed", job_id)]
    receiver.wait()
    body = json.loads(receiver.calls[0][0])
    assert body["status"] == "failed"
    assert "worker running this job was lost" in body["response"]["body"]


def test_each_end_is_announced_exactly_once(app: Flask, announced: list[tuple[str, int]]) -> None:
    """Processed, failed by its worker, failed by the sweeper, cancelled: one signal each."""
    processed = Job.create_and_enqueue(workers.Echo).id
    failed = Job.create_and_enqueue(workers.Boom).id
    lost = _lost_job()
    waiting = add_job().id
    sweep_jobs()
    sweep_jobs()
    cancel_job(waiting)
    assert sorted(announced) == sorted(
        [("finished", processed), ("failed", failed), ("failed", lost), ("cancelled", waiting)]
    )


def test_sweeper_loses_to_a_worker_that_finished(
    app: Flask, session: scoped_session[Any], announced: list[tuple[str, int]]
) -> None:
    """A lost job whose attempt has moved on meanwhile is not failed a second time."""
    job_id = _lost_job()
    job = reload_job(job_id)
    job.status = JobStatus.PROCESSED
    session.commit()
    assert sweep_jobs().failed == 0
    assert announced == []


# Cancel: one statement whose result is the answer -------------------------------------------


def test_cancel_answers_from_its_own_statement(
    job_store: JobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A successful cancel is one statement: its answer needs no second read."""
    job_id = add_job().id
    store = job_store
    monkeypatch.setattr(store, "fetch_reply", lambda job_id: pytest.fail("read again"))
    monkeypatch.setattr(store, "update_then_read", lambda *a: pytest.fail("two statements"))
    reply = cancel_job(job_id)
    assert reply.status is JobStatus.CANCELLED
    assert reply.status_code == 499
    assert json.loads(reply.response or "") == {"error": "Job cancelled"}


# Long polls ---------------------------------------------------------------------------------


def test_long_poll_on_a_job_purged_meanwhile_is_404(
    app: Flask, session: scoped_session[Any]
) -> None:
    """A job deleted during a long poll answers 404, as a plain GET would."""
    job = add_job()
    token, job_id = job.token, job.id

    def purge() -> None:
        time.sleep(0.3)
        with app.app_context():
            session.execute(sa.delete(Job).where(Job.id == job_id))
            session.commit()

    remover = threading.Thread(target=purge)
    remover.start()
    started = time.monotonic()
    response = app.test_client().get(
        "/async_request/job", headers={"X-JOB-AUTHORIZATION": token, "Prefer": "wait=2"}
    )
    remover.join()
    assert response.status_code == 404
    assert time.monotonic() - started < 1.9
    assert poll(app.test_client(), token).status_code == 404


# Transactional workers ----------------------------------------------------------------------


@pytest.fixture
def effects_table(app: Flask) -> Iterator[None]:
    session = current_db().session
    session.execute(sa.text("CREATE TABLE effects (job_id INTEGER NOT NULL)"))
    session.commit()
    yield


def _effects() -> list[int]:
    session = current_db().session
    rows = session.execute(sa.text("SELECT job_id FROM effects")).scalars().all()
    session.commit()
    return list(rows)


def test_transactional_worker_commits_its_writes_with_the_reply(
    app: Flask, effects_table: None
) -> None:
    """The worker's own write and the stored reply land together."""
    job = Job.create_and_enqueue(workers.WriteEffect)
    assert job.status is JobStatus.PROCESSED
    assert job.response == "written"
    assert _effects() == [job.id]


def test_transactional_worker_taken_over_writes_nothing(
    app: Flask, effects_table: None, announced: list[tuple[str, int]]
) -> None:
    """An attempt whose job was taken over rolls its writes back with its reply."""
    job = Job.create_and_enqueue(workers.WriteEffect, take_over=True)
    assert job.status is JobStatus.PROCESSING
    assert job.response is None
    assert _effects() == []
    assert announced == []


def test_transactional_worker_that_fails_writes_nothing(app: Flask, effects_table: None) -> None:
    """A failing execute rolls its writes back; the failure is stored."""
    job = Job.create_and_enqueue(workers.WriteEffect, fail=True)
    assert job.status is JobStatus.FAILED
    assert job.response is not None
    assert json.loads(job.response) == {"error": "failed after writing"}
    assert _effects() == []
