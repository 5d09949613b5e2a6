"""results: the result store's chunks in the database, deleted when stale, in bounded memory."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, current_app

from flask_async_request import Job, JobStatus, lifecycle, results
from flask_async_request.retention import purge_expired, purge_jobs
from flask_async_request.web import cancel_job
from tests import workers
from tests.conftest import INTERNALS, chunk_count, current_db, download_result, poll_finished

# What becomes of the chunks ------------------------------------------------------------------


def test_purge_deletes_a_jobs_chunks(app: Flask, client: Any, small_chunks: int) -> None:
    """The periodic purge deletes an expired job's chunks with it."""
    job_id = Job.create_and_enqueue(workers.ReturnChunks, 3, 1000).id
    other_id = Job.create_and_enqueue(workers.ReturnChunks, 2, 1000).id
    assert chunk_count() == 5
    session = current_db().session
    aged = Job.finished_at - timedelta(days=2)
    session.execute(sa.update(Job).where(Job.id == job_id).values(finished_at=aged))
    session.commit()
    assert purge_expired() == 1
    assert chunk_count(job_id) == 0
    assert chunk_count(other_id) == 2


def test_cancel_deletes_the_chunks_written(app: Flask) -> None:
    """Cancelling a running job deletes what its worker wrote of a result."""
    store = INTERNALS.job_store(current_app)
    job = lifecycle.new_job("tests.workers:ReturnBytes", {"args": [], "kwargs": {}})
    lifecycle.insert(store, job)
    claim = lifecycle.claim(store, job.id, timedelta(minutes=1))
    assert claim is not None
    results.write(results.autocommitted(store), job.id, claim.attempt, [b"x" * 10])
    assert chunk_count(job.id) == 1
    cancel_job(job.id)
    assert chunk_count(job.id) == 0


def test_crash_mid_write_fails_readably_and_purge_removes_the_chunks(
    app: Flask, client: Any, small_chunks: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker raising after some chunks: failed with its error, no result; the purge cleans up."""
    # As if the process died before it could delete what it wrote.
    monkeypatch.setattr(results, "discard", lambda *args, **kwargs: None)
    job = Job.create_and_enqueue(workers.ReturnChunks, 5, 1000, fail_after=3)
    answer = poll_finished(client, job.token)
    assert answer["status"] == "failed"
    assert json.loads(answer["response"]["body"]) == {"error": "the disk went away"}
    assert "href" not in answer["response"]
    assert chunk_count(job.id) == 3
    assert download_result(client, job.token).status_code == 404
    purge_jobs(timedelta(days=1))
    assert chunk_count(job.id) == 0


def test_crash_mid_write_deletes_its_chunks_at_once(
    app: Flask, client: Any, small_chunks: int
) -> None:
    """A worker raising after some chunks leaves none behind when the runner can delete them."""
    job = Job.create_and_enqueue(workers.ReturnChunks, 5, 1000, fail_after=2)
    assert poll_finished(client, job.token)["status"] == "failed"
    assert chunk_count(job.id) == 0


def test_purge_deletes_chunks_of_jobs_gone(app: Flask) -> None:
    """Chunks whose job no longer exists (deleted by hand) are deleted by the purge."""
    store = INTERNALS.job_store(current_app)
    results.write(results.autocommitted(store), 12345, 1, [b"orphan"])
    assert chunk_count(12345) == 1
    purge_jobs(timedelta(days=1))
    assert chunk_count(12345) == 0


# Memory --------------------------------------------------------------------------------------


class _Fifty:
    """50 MiB in 1 MiB chunks, made as they are read."""

    def __iter__(self) -> Iterator[bytes]:
        for index in range(50):
            yield bytes([index]) * (1024 * 1024)


def test_a_large_result_is_written_and_read_in_bounded_memory(app: Flask, client: Any) -> None:
    """50 MiB go in and out with a peak of a few chunks, never the whole result."""
    store = INTERNALS.job_store(current_app)
    job = lifecycle.new_job("tests.workers:ReturnBytes", {"args": [], "kwargs": {}})
    lifecycle.insert(store, job)
    claim = lifecycle.claim(store, job.id, timedelta(minutes=1))
    assert claim is not None
    tracemalloc.start()
    try:
        written = results.write(results.autocommitted(store), job.id, claim.attempt, _Fifty())
        _, write_peak = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        total = 0
        for piece in results.read(store, job.id, claim.attempt, 0, written.size):
            total += len(piece)
        _, read_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (written.size, total) == (50 * 1024 * 1024, 50 * 1024 * 1024)
    # A generous bound: a handful of 1 MiB chunks, far from 50 MiB.
    assert write_peak < 12 * 1024 * 1024, write_peak
    assert read_peak < 12 * 1024 * 1024, read_peak


def test_transactional_worker_stores_its_result_in_its_transaction(
    app: Flask, client: Any, small_chunks: int
) -> None:
    """A transactional worker's chunks commit with its end, on SQLite's one writer too."""
    job = Job.create_and_enqueue(workers.TransactionalBytes)
    assert job.status is JobStatus.PROCESSED
    assert chunk_count(job.id) == 3
    assert download_result(client, job.token).data == b"".join(bytes([i]) * 1000 for i in range(3))
