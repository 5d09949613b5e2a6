"""The running cap with a real `celery worker`: never more than the cap of one owner at once."""

from __future__ import annotations

import sys
import time
from datetime import datetime

import pytest

from flask_async_request import Job, JobStatus
from tests import workers
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def _most_at_once(spans: list[tuple[datetime, datetime]]) -> int:
    """The most spans that overlap at one instant."""
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans])
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


def test_a_worker_never_runs_more_than_the_cap_of_one_owner(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alice's 12 jobs and bob's 4 on 4 worker slots, cap 2: at most 2 of each at once; all run."""
    monkeypatch.setenv("FAR_TEST_OWNER_MAX_RUNNING", "2")
    monkeypatch.setenv("FAR_TEST_OWNER_DEFER", "0.2")
    app, worker = stack(concurrency=4)
    project = sys.modules["tests.integration.project"]
    ids: dict[str, list[int]] = {"alice": [], "bob": []}
    with app.app_context():
        for owner, count in (("alice", 12), ("bob", 4)):
            project.OWNER["name"] = owner
            for n in range(count):
                ids[owner].append(Job.create_and_enqueue(workers.Sleep, 0.3, f"{owner}-{n}").id)
        project.OWNER["name"] = None
    deadline = time.monotonic() + 60
    with app.app_context():
        session = project.db.session
        while True:
            session.expire_all()
            jobs = session.query(Job).all()
            if (
                all(job.status is JobStatus.PROCESSED for job in jobs)
                or time.monotonic() > deadline
            ):
                break
            time.sleep(0.2)
        assert [job.status for job in jobs] == [JobStatus.PROCESSED] * 16, worker.output()
        # Each ran once: a deferred job is never claimed, so never counted an attempt.
        assert {job.attempts for job in jobs} == {1}
        spans = {
            owner: [
                (job.started_at, job.finished_at)
                for job in jobs
                if job.owner == owner and job.started_at and job.finished_at
            ]
            for owner in ids
        }
    assert _most_at_once(spans["alice"]) == 2
    assert _most_at_once(spans["bob"]) <= 2
    assert _most_at_once(spans["alice"] + spans["bob"]) > 2
    assert "Traceback" not in worker.output()
