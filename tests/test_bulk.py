"""bulk: retry, cancel and delete of a selection, each job through its own transition."""

from __future__ import annotations

import pytest
from flask import Flask

from flask_async_request import Job, JobStatus, bulk
from flask_async_request.reading import JobFilter
from tests.conftest import add_job, current_db, reload_job


def test_a_selection_takes_the_statuses_its_action_applies_to(app: Flask) -> None:
    """With no status named, retry takes failed jobs, cancel pending ones, delete finished ones."""
    failed = add_job(status=JobStatus.FAILED).id
    waiting = add_job(status=JobStatus.WAITING).id
    done = add_job(status=JobStatus.PROCESSED).id
    echo = JobFilter(worker="tests.workers:Echo")
    assert bulk.selected("retry", echo) == [failed]
    assert bulk.selected("cancel", echo) == [waiting]
    assert bulk.selected("delete", echo) == [done, failed]
    assert bulk.selected("delete", echo, limit=1) == [done]


def test_a_selection_needs_a_filter_and_a_fitting_status() -> None:
    """Every job is not a selection; a status the action does not take is refused."""
    with pytest.raises(ValueError, match="needs a selection"):
        bulk.selection("delete", JobFilter())
    with pytest.raises(ValueError, match="Only processed or failed or cancelled jobs"):
        bulk.selection("delete", JobFilter((JobStatus.WAITING,)))


def test_delete_removes_finished_jobs_and_keeps_pending_ones(app: Flask) -> None:
    """A finished job is deleted; a pending or missing one is skipped, with why."""
    done = add_job(status=JobStatus.PROCESSED).id
    waiting = add_job(status=JobStatus.WAITING).id
    result = bulk.delete([done, waiting, 424242])
    assert result.done == [done]
    assert "only finished jobs can be deleted" in result.skipped[waiting]
    assert "424242" in result.skipped[424242]
    current_db().session.remove()
    assert reload_job(waiting).status is JobStatus.WAITING
    assert current_db().session.get(Job, done) is None


def test_retry_and_cancel_skip_what_they_do_not_apply_to(app: Flask) -> None:
    """A retry of a job that did not fail and a cancel of a finished one are skipped."""
    done = add_job(status=JobStatus.PROCESSED).id
    retried = bulk.retry([done])
    cancelled = bulk.cancel([done])
    assert retried.done == cancelled.done == []
    assert "only failed jobs" in retried.skipped[done]
    assert "cannot be cancelled" in cancelled.skipped[done]
    assert bulk.BulkResult("x", [1], {2: "why"}).as_json() == {
        "action": "x",
        "done": [1],
        "skipped": [{"id": 2, "reason": "why"}],
        "unsent": [],
    }
