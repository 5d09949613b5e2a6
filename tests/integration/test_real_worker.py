"""End to end with real processes: PostgreSQL, Redis or RabbitMQ, and `celery worker -c 2`."""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from flask import url_for

from flask_async_request import Job, JobStatus
from flask_async_request.broker import PROCESS_TASK, task_id
from flask_async_request.values import new_uid
from tests import workers
from tests.conftest import Internals, current_db, json_of, poll
from tests.integration.conftest import Stack, effects

pytestmark = pytest.mark.integration


def _wait_all_finished(app: Any, ids: list[int], timeout: float = 120) -> dict[int, Job]:
    deadline = time.monotonic() + timeout
    with app.app_context():
        session = current_db().session
        while time.monotonic() < deadline:
            session.expire_all()
            jobs = {j.id: j for j in session.query(Job).filter(Job.id.in_(ids))}
            if all(j.status.finished for j in jobs.values()) and len(jobs) == len(ids):
                for job in jobs.values():
                    session.expunge(job)
                return jobs
            session.rollback()
            time.sleep(0.2)
    raise AssertionError("jobs still pending after the timeout")


def test_poll_until_done_over_http(stack: Stack) -> None:
    """A view answers 202 with token and url; polling gives 202 then the stored reply."""
    app, _ = stack()

    @app.post("/sleep")
    def sleep() -> Any:
        job = Job.create_and_enqueue(workers.Sleep, 0.5, tag="http")
        return {"token": job.token, "url": url_for("async_request.job", _external=True)}, 202

    client = app.test_client()
    created = client.post("/sleep")
    assert created.status_code == 202
    token = json_of(created)["token"]
    assert poll(client, token).status_code == 202
    deadline = time.monotonic() + 30
    while (response := poll(client, token)).status_code == 202:
        assert time.monotonic() < deadline, "job did not finish"
        time.sleep(0.1)
    assert response.status_code == 200
    assert response.json["status"] == "processed"
    assert json.loads(response.json["response"]["body"])["tag"] == "http"


def test_burst_on_prefork_children(stack: Stack, tmp_path: Path) -> None:
    """A burst of jobs on two prefork children: each runs once and none is lost."""
    app, worker = stack(concurrency=2)
    with app.app_context():
        ids = [Job.create_and_enqueue(workers.Sleep, 0.01, tag=str(i)).id for i in range(150)]
        failing = Job.create_and_enqueue(workers.Boom, "real failure").id
    jobs = _wait_all_finished(app, [*ids, failing])
    assert {jobs[i].status for i in ids} == {JobStatus.PROCESSED}
    # A processed job always has a response; "" would fail to parse, as None would.
    pids = Counter(json.loads(jobs[i].response or "")["pid"] for i in ids)
    assert len(pids) == 2, f"expected both children to work, got {pids}"
    runs = Counter(name.split("-")[0] for name in effects(tmp_path))
    assert runs == Counter({str(i): 1 for i in ids})
    assert jobs[failing].status is JobStatus.FAILED
    failure = jobs[failing].response
    assert failure is not None
    assert json.loads(failure) == {"error": "real failure"}
    log = worker.output()
    assert "StaleDataError" not in log
    assert "ROLLBACK" not in log


def test_duplicate_messages_run_once(stack: Stack, tmp_path: Path) -> None:
    """The same job published three times is executed once."""
    app, _ = stack()
    with app.app_context():
        job = Job.create_and_enqueue(workers.Sleep, 0.3, tag="dup")
        job_id = job.id
        task = app.extensions["celery"].tasks[PROCESS_TASK]
        task.apply_async((job_id,), queue=job.queue)
        task.apply_async((job_id,), queue=job.queue)
    _wait_all_finished(app, [job_id])
    time.sleep(1)  # let the duplicates be consumed too
    assert [name.split("-")[0] for name in effects(tmp_path)] == [str(job_id)]


def test_a_message_for_another_uid_leaves_the_job_to_its_own(stack: Stack, tmp_path: Path) -> None:
    """A message naming the job's id and another uid, one sent before the table was reset,
    claims nothing on a worker; the job's own message then runs it once."""
    app, worker = stack()
    with app.app_context():
        job = Job(worker="tests.workers:Sleep", params={"args": [0.1], "kwargs": {"tag": "own"}})
        session = current_db().session
        session.add(job)
        session.commit()
        job_id, uid = job.id, job.uid
        queue = app.config["ASYNC_REQUEST_QUEUE"]
        task = app.extensions["celery"].tasks[PROCESS_TASK]
        task.apply_async((job_id,), queue=queue, task_id=task_id(job_id, new_uid()))
    deadline = time.monotonic() + 30
    while "another job's now" not in worker.output():
        assert time.monotonic() < deadline, worker.output()
        time.sleep(0.2)
    with app.app_context():
        stored = current_db().session.get(Job, job_id)
        assert stored is not None
        assert (stored.status, stored.attempts) == (JobStatus.WAITING, 0)
        task.apply_async((job_id,), queue=queue, task_id=task_id(job_id, uid))
    assert _wait_all_finished(app, [job_id])[job_id].status is JobStatus.PROCESSED
    assert [name.split("-")[0] for name in effects(tmp_path)] == [str(job_id)]


def test_rabbitmq_broker(stack: Stack) -> None:
    """The same flow works with RabbitMQ as the broker."""
    app, _ = stack(broker="amqp")
    with app.app_context():
        job_id = Job.create_and_enqueue(workers.Echo, "rabbit", n=1).id
    job = _wait_all_finished(app, [job_id])[job_id]
    assert job.status is JobStatus.PROCESSED
    assert job.response is not None
    assert json.loads(job.response)["args"] == ["rabbit"]


def test_creation_paths_on_postgres(stack: Stack, internals: Internals) -> None:
    """A clean session takes the one-statement insert; pending work is committed along."""
    import sqlalchemy as sa

    app, _ = stack()
    with app.app_context():
        assert internals.job_store(app).autocommit
        quick = Job.create_and_enqueue(workers.Echo, "quick")
        assert quick in current_db().session
        assert quick.params == {"args": ["quick"], "kwargs": {}}
        other = Job.create_and_enqueue(workers.Echo, "other")
        other.params = {"args": ["changed"], "kwargs": {}}  # pending in the session
        Job.create_and_enqueue(workers.Echo, "after")
        with current_db().engine.connect() as conn:
            stored = conn.execute(
                sa.text("SELECT params FROM async_request_jobs WHERE id = :id"), {"id": other.id}
            ).scalar_one()
        assert stored["args"] == ["changed"]
        quick_id = quick.id
    jobs = _wait_all_finished(app, [quick_id])
    assert jobs[quick_id].status is JobStatus.PROCESSED
