"""The rows the transitions hand back, and the sweeper's reads of lost and waiting jobs."""

from __future__ import annotations

from datetime import timedelta

from flask import Flask, current_app

from flask_async_request import Job, JobStatus, lifecycle
from flask_async_request.outcomes import Outcome
from flask_async_request.rows import (
    Claim,
    Ended,
    LostJob,
    WaitingJob,
    lost_jobs,
    stale_jobs,
    waiting_jobs,
)
from flask_async_request.statements import ENDED_COLUMNS, JobReply
from flask_async_request.values import utcnow
from tests.conftest import INTERNALS, add_job, current_db


def _processing(lease_from_now: timedelta) -> Job:
    job = add_job(status=JobStatus.PROCESSING)
    job.attempts = 1
    job.lease_expires_at = utcnow() + lease_from_now
    current_db().session.commit()
    return job


def test_ended_reads_a_row_of_the_ending_columns() -> None:
    """An ending statement's row becomes the job's id, reply, callback and worker."""
    # Owner, status, code, body, progress, message, content type, headers, a
    # stored result's size and checksum, attempts, the result's location.
    reply = (
        None, JobStatus.PROCESSED, 201, '{"ok": true}', 1.0, None, "application/json",
        None, None, None, 1, None,
    )  # fmt: skip
    row = (7, "uid-7", *reply, "https://example.test/done", "tests.workers:Echo")
    assert len(row) == len(ENDED_COLUMNS)
    ended = Ended.from_row(row)
    assert ended.id == 7
    assert ended.status is JobStatus.PROCESSED
    assert ended.uid == "uid-7"
    assert ended.reply.status_code == 201
    assert ended.callback_url == "https://example.test/done"
    assert ended.worker == "tests.workers:Echo"


def test_ended_ignores_columns_an_announcing_statement_adds() -> None:
    """A row with a column beyond the ending ones (the NOTIFY's) reads the same."""
    reply = (
        None, JobStatus.FAILED, 500, '{"error": "x"}', None, None, None, None, None, None, 1, None,
    )  # fmt: skip
    row = (3, "uid-3", *reply, None, "w:W")
    assert Ended.from_row((*row, "announced")) == Ended.from_row(row)


def test_a_claim_and_an_end_come_back_as_rows(app: Flask) -> None:
    """claim hands back a Claim of the attempt, and finish an Ended with the stored reply."""
    store = INTERNALS.job_store(current_app)
    job = add_job(args=[1])
    claim = lifecycle.claim(store, job.id, timedelta(minutes=1))
    assert isinstance(claim, Claim)
    assert (claim.id, claim.uid, claim.attempt) == (job.id, job.uid, 1)
    assert claim.worker == "tests.workers:Echo"
    ended = lifecycle.finish(store, job.id, claim.attempt, Outcome(JobStatus.PROCESSED, 200, "1"))
    assert isinstance(ended, Ended)
    assert isinstance(ended.reply, JobReply)
    assert (ended.id, ended.status, ended.reply.response) == (job.id, JobStatus.PROCESSED, "1")


def test_lost_jobs_are_the_processing_ones_whose_lease_ran_out(app: Flask) -> None:
    """Only a processing job past its lease is lost, read with its attempt."""
    lost = _processing(timedelta(seconds=-5))
    _processing(timedelta(minutes=5))
    add_job()
    found = lost_jobs(INTERNALS.job_store(current_app), utcnow(), 10)
    assert [type(job) for job in found] == [LostJob]
    assert (found[0].id, found[0].uid, found[0].attempt) == (lost.id, lost.uid, 1)
    assert found[0].worker == "tests.workers:Echo"


def test_lost_jobs_come_oldest_first_up_to_the_limit(app: Flask) -> None:
    """The sweeper reads lost jobs in pages: the lowest ids first."""
    ids = [_processing(timedelta(seconds=-5)).id for _ in range(3)]
    assert [job.id for job in lost_jobs(INTERNALS.job_store(current_app), utcnow(), 2)] == ids[:2]


def test_stale_jobs_are_the_waiting_ones_due_before_the_cutoff(app: Flask) -> None:
    """A waiting job due before the cutoff is stale; a later one and a finished one are not."""
    stale = add_job()
    stale.due_at = utcnow() - timedelta(minutes=10)
    fresh = add_job()
    fresh.due_at = utcnow() + timedelta(minutes=10)
    add_job(status=JobStatus.PROCESSED).due_at = utcnow() - timedelta(minutes=10)
    current_db().session.commit()
    found = stale_jobs(INTERNALS.job_store(current_app), utcnow() - timedelta(minutes=5), 10)
    assert [type(job) for job in found] == [WaitingJob]
    assert (found[0].id, found[0].uid, found[0].worker) == (stale.id, stale.uid, stale.worker)


def test_waiting_jobs_are_paged_by_id_whenever_due(app: Flask) -> None:
    """Every waiting job above the id given, due or not, oldest id first."""
    first, second, later = add_job(), add_job(), add_job()
    later.due_at = utcnow() + timedelta(hours=1)
    add_job(status=JobStatus.FAILED)
    current_db().session.commit()
    store = INTERNALS.job_store(current_app)
    assert [job.id for job in waiting_jobs(store, 0, 2)] == [first.id, second.id]
    assert [job.id for job in waiting_jobs(store, second.id, 2)] == [later.id]
