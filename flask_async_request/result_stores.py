"""Which result store holds a result, and deleting results with their jobs.

The app's store (``ASYNC_REQUEST_RESULT_STORE``) is where new results are
written; a result written before a change of the setting is read, and deleted,
where its job's ``result_location`` says it is: ``NULL`` (or ``db:``) the
database's chunks, ``file://`` a directory's file, ``s3://`` a bucket's object.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, NamedTuple

import sqlalchemy as sa

from . import results
from .directory import DirectoryStore, path_of
from .models import Job, JobStatus
from .results import DatabaseStore, database_location
from .s3 import S3Store
from .state import get_state
from .storage import Leftover, ResultMissing, ResultStore, result_name
from .store import JobStore

logger = logging.getLogger("flask_async_request")

#: How many leftovers' jobs are read in one query.
_BATCH = 500

_JOBS_OF = sa.select(Job.id, Job.status, Job.attempts, Job.result_location).where(
    Job.id.in_(sa.bindparam("job_ids", expanding=True))
)
#: The stored results of some jobs: what deleting those jobs must delete.
RESULTS_OF = sa.select(Job.id, Job.attempts, Job.result_location).where(
    Job.id.in_(sa.bindparam("job_ids", expanding=True)), Job.result_size.is_not(None)
)


def configured(jobs: JobStore | None = None) -> ResultStore:
    """The store the current app writes new results to."""
    state = get_state()
    store = state.settings.result_store
    if store is None:
        return DatabaseStore(jobs or state.store())
    return store


def writer(jobs: JobStore, session: Any, transactional: bool) -> tuple[ResultStore, bool]:
    """The store a worker writes its result to, and whether that is in its session.

    A transactional worker's chunks go in its transaction (on SQLite, the one
    writer's), with its writes and its end; any other's, and any other store's
    writes, each on their own.
    """
    store = configured(jobs)
    if transactional and isinstance(store, DatabaseStore):
        return DatabaseStore(
            jobs, lambda statement, params: session.execute(statement, params)
        ), True
    return store, False


class Located(NamedTuple):
    """A stored result: the store that holds it, and its location there."""

    store: ResultStore
    location: str


def locate(job_id: int, attempts: int, location: str | None) -> Located:
    """Where the result recorded on a job is, whatever the app's store is now.

    :raises ResultMissing: ``location`` is of no store this library knows.
    """
    state = get_state()
    if location is None or location.startswith(f"{results.SCHEME}:"):
        database = DatabaseStore(state.store())
        return Located(database, location or database_location(job_id, attempts))
    current = state.settings.result_store
    if current is not None and current.owns(location):
        return Located(current, location)
    path = path_of(location)
    if path is not None:
        return Located(DirectoryStore(path.parent), location)
    if location.startswith("s3://"):
        # The app's S3 client, if it has one (its endpoint, its credentials).
        client = current.client if isinstance(current, S3Store) else None
        try:
            return Located(S3Store.from_url(location, client=client), location)
        except ValueError:
            pass
    raise ResultMissing(f"The result location {location!r} is of no known store.")


def discard(jobs: JobStore, job_id: int, attempt: int | None) -> None:
    """Delete what an attempt (or, ``None``, any attempt) wrote of its result, if anything.

    In the database's chunks, and in the app's store; logged, not raised, if
    that fails: what is left is deleted by the purge.
    """
    results.discard(jobs, job_id, attempt)
    store = configured(jobs)
    if isinstance(store, DatabaseStore) or attempt is None or attempt < 1:
        return
    _quietly(store, store.location_of(result_name(job_id, attempt)), job_id)


def discard_written(jobs: JobStore, job_id: int, attempt: int, location: str | None) -> None:
    """Delete a result written in full that did not become its job's (the job was cancelled)."""
    if location is None:
        results.discard(jobs, job_id, attempt)
        return
    try:
        store, location = locate(job_id, attempt, location)
    except ResultMissing:
        return
    _quietly(store, location, job_id)


def _quietly(store: ResultStore, location: str, job_id: int) -> None:
    try:
        store.delete(location)
    except Exception:
        logger.warning(
            "Job %s: its stored result %s could not be deleted now; the purge deletes it.",
            job_id,
            location,
            exc_info=True,
        )


def delete_results(jobs: JobStore, stored: Iterable[tuple[int, int, str | None]]) -> None:
    """Delete the results of jobs deleted: rows of :data:`RESULTS_OF`, read before."""
    in_database = []
    for job_id, attempts, location in stored:
        if location is None:
            in_database.append(job_id)
            continue
        try:
            store, location = locate(job_id, attempts, location)
        except ResultMissing:
            continue
        _quietly(store, location, job_id)
    results.delete_jobs(jobs, in_database)


def stale(leftover: Leftover, job: tuple[JobStatus, int, str | None] | None) -> bool:
    """Whether a store's leftover is no job's result, nor ever will be.

    ``job`` is its job's status, attempts and result location, ``None`` for a
    job that is gone. As the database's chunks: of a job gone; of a finished
    job whose result it is not; of a waiting job that will run again after it;
    of a running job's earlier attempt.
    """
    if job is None:
        return True
    status, attempts, location = job
    if status.finished:
        return not (leftover.complete and leftover.location == location)
    if status is JobStatus.WAITING:
        return leftover.attempt <= attempts
    return leftover.attempt < attempts


def sweep(jobs: JobStore, store: ResultStore) -> int:
    """Delete the leftovers of ``store`` that are no job's result; how many were deleted.

    A leftover is deleted only once it has gone unwritten for the store's
    ``stale_after`` seconds, so neither a write in progress nor a result whose
    job's end is being stored is ever deleted under its writer.
    """
    deleted = 0
    batch: list[Leftover] = []

    def settle() -> None:
        nonlocal deleted
        ids = sorted({leftover.job_id for leftover in batch})
        rows = {
            row[0]: (JobStatus(row[1]), int(row[2]), row[3])
            for row in jobs.all(_JOBS_OF, {"job_ids": ids})
        }
        for leftover in batch:
            if stale(leftover, rows.get(leftover.job_id)):
                try:
                    store.delete(leftover.location)
                except Exception:
                    logger.warning("Could not delete %s.", leftover.location, exc_info=True)
                    continue
                deleted += 1
        batch.clear()

    for leftover in store.leftovers():
        if leftover.age < store.stale_after or leftover.job_id >= 2**63:
            continue
        batch.append(leftover)
        if len(batch) >= _BATCH:
            settle()
    if batch:
        settle()
    if deleted:
        logger.info("Deleted %s stored results or writes cut short that were no job's.", deleted)
    return deleted
