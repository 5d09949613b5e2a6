"""The result store: large and binary replies, in chunks, in the app's own database.

A worker's reply that is binary, or text larger than
``ASYNC_REQUEST_RESULT_STORE_THRESHOLD``, is written here a chunk of
:data:`CHUNK_SIZE` bytes at a time, each chunk in a short transaction of its
own, keyed by the job and its attempt. The result becomes visible only with
the job's end: the finish that stores ``processed`` records its size and
SHA-256 in the same statement, and readers read the chunks of a job with a
``result_size``, of the attempt that finished it. Chunks of a run that did
not finish (the worker raised, its process died, the job was cancelled) are
never read, and :func:`delete_stale` deletes them.

Memory stays bounded both ways: at most two chunks are held while writing,
one while reading.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import sqlalchemy as sa

from .models import Job, JobStatus, ResultChunk
from .statements import hot
from .storage import Leftover, ResultMissing, ResultStore, Written, parse_name, result_name
from .store import JobStore

logger = logging.getLogger("flask_async_request")

#: Bytes per stored chunk: 1 MiB, well below MariaDB's and MySQL's smallest
#: default ``max_allowed_packet`` (4 MiB on MySQL 5.7, 16 MiB on MariaDB), which
#: one INSERT of a chunk must fit in, escaping included.
CHUNK_SIZE = 1024 * 1024

_KEY = (
    ResultChunk.job_id == sa.bindparam("job_id"),
    ResultChunk.attempt == sa.bindparam("attempt"),
)
INSERT_CHUNK = sa.insert(ResultChunk)
#: One chunk, read raw where the store can: a download is a run of these.
READ_CHUNK = hot(
    sa.select(ResultChunk.start, ResultChunk.data).where(
        *_KEY, ResultChunk.seq == sa.bindparam("seq")
    )
)
#: The chunk that holds byte ``offset``: the last to start at or before it.
CHUNK_AT = (
    sa.select(ResultChunk.seq)
    .where(*_KEY, ResultChunk.start <= sa.bindparam("offset"))
    .order_by(ResultChunk.seq.desc())
    .limit(1)
)
# Run by a cancel, a retry and the sweeper's transitions: raw, as their own statements are.
DELETE_ATTEMPT = hot(sa.delete(ResultChunk).where(*_KEY))
DELETE_JOB = hot(sa.delete(ResultChunk).where(ResultChunk.job_id == sa.bindparam("job_id")))
DELETE_JOBS = sa.delete(ResultChunk).where(
    ResultChunk.job_id.in_(sa.bindparam("job_ids", expanding=True))
)
#: Chunks no reader will read: of a job that is gone, or finished without them as
#: its result. A running job's chunks are its worker's, being written.
_STALE = (
    sa.select(ResultChunk.job_id, ResultChunk.attempt)
    .outerjoin(Job, Job.id == ResultChunk.job_id)
    .where(
        sa.or_(
            Job.id.is_(None),
            sa.and_(
                Job.status.not_in([JobStatus.WAITING.value, JobStatus.PROCESSING.value]),
                sa.or_(
                    Job.result_size.is_(None),
                    Job.attempts != ResultChunk.attempt,
                    # Its result is in another store.
                    Job.result_location.is_not(None),
                ),
            ),
            # Waiting again (a retry, a lost worker's job run again): no attempt
            # before the next one will finish; running again: none before this one.
            sa.and_(Job.status == JobStatus.WAITING.value, ResultChunk.attempt <= Job.attempts),
            sa.and_(Job.status == JobStatus.PROCESSING.value, ResultChunk.attempt < Job.attempts),
        )
    )
    .distinct()
    .limit(sa.bindparam("limit"))
)


#: Runs one statement that changes rows: in a transaction of its own, or in a session's.
Execute = Callable[[sa.Executable, dict[str, Any]], Any]


def autocommitted(store: JobStore) -> Execute:
    """Run each statement in a transaction of its own, through ``store``."""
    return store.rowcount


def write(
    execute: Execute,
    job_id: int,
    attempt: int,
    chunks: Iterable[bytes],
    *,
    chunk_size: int | None = None,
) -> Written:
    """Store ``chunks`` as the attempt's result, ``chunk_size`` (:data:`CHUNK_SIZE`) bytes a row.

    Whatever ``chunks`` raises (the worker's own code runs as they are read)
    propagates, the chunks written so far left for :func:`discard` or the purge.
    """
    chunk_size = chunk_size or CHUNK_SIZE
    digest = hashlib.sha256()
    size = seq = 0
    pending = bytearray()

    def flush(data: bytes) -> None:
        nonlocal seq
        execute(
            INSERT_CHUNK,
            {"job_id": job_id, "attempt": attempt, "seq": seq, "start": size, "data": data},
        )
        seq += 1

    for chunk in chunks:
        if not chunk:
            continue
        digest.update(chunk)
        pending += chunk
        while len(pending) >= chunk_size:
            data = bytes(pending[:chunk_size])
            del pending[:chunk_size]
            flush(data)
            size += len(data)
    if pending:
        flush(bytes(pending))
        size += len(pending)
    return Written(size, digest.hexdigest())


def discard(store: JobStore, job_id: int, attempt: int | None = None) -> None:
    """Delete the chunks of ``job_id`` (of one attempt, or all); log, not raise, if that fails.

    What is left is deleted by the purge.
    """
    try:
        if attempt is None:
            store.rowcount(DELETE_JOB, {"job_id": job_id})
        else:
            store.rowcount(DELETE_ATTEMPT, {"job_id": job_id, "attempt": attempt})
    except sa.exc.SQLAlchemyError:
        logger.warning(
            "Job %s: its stored chunks could not be deleted now; the purge deletes them.",
            job_id,
            exc_info=True,
        )


def delete_jobs(store: JobStore, job_ids: list[int]) -> None:
    """Delete the chunks of the jobs ``job_ids``, about to be deleted themselves."""
    if job_ids:
        store.rowcount(DELETE_JOBS, {"job_ids": job_ids})


def delete_stale(store: JobStore, *, batch_size: int = 100) -> int:
    """Delete the chunks no reader will read; how many attempts' chunks were deleted.

    Those of a job that no longer exists, of a finished job whose result they
    are not (its worker raised, or its process died, while writing them; it
    was cancelled), and of a job waiting to run again.
    """
    deleted = 0
    while keys := store.all(_STALE, {"limit": batch_size}):
        for job_id, attempt in keys:
            store.rowcount(DELETE_ATTEMPT, {"job_id": job_id, "attempt": attempt})
        deleted += len(keys)
        if len(keys) < batch_size:
            break
    if deleted:
        logger.info("Deleted the stored chunks of %s unfinished results.", deleted)
    return deleted


class ChunkMissing(ResultMissing):
    """A chunk of a result being read is gone: the job was purged meanwhile."""


def read(store: JobStore, job_id: int, attempt: int, start: int, stop: int) -> Iterator[bytes]:
    """Bytes ``start`` to ``stop`` (excluded) of the attempt's result, a chunk at a time.

    Each chunk is one short query, with no connection held between two: a slow
    client costs the database nothing while it reads.

    :raises ChunkMissing: as the chunks are read, when one is gone.
    """
    if start >= stop:
        return
    key = {"job_id": job_id, "attempt": attempt}
    row = store.first(CHUNK_AT, {**key, "offset": start})
    if row is None:
        raise ChunkMissing(f"Job {job_id}'s result is gone.")
    seq = int(row[0])
    position = start
    while position < stop:
        row = store.first(READ_CHUNK, {**key, "seq": seq}, binary=True)
        if row is None:
            raise ChunkMissing(f"Job {job_id}'s result is gone.")
        chunk_start, data = int(row[0]), bytes(row[1])
        piece = data[position - chunk_start : stop - chunk_start]
        if not piece:
            raise ChunkMissing(f"Job {job_id}'s result is shorter than recorded.")
        yield piece
        position += len(piece)
        seq += 1


#: The scheme of the database store's locations. Its results record no location
#: on the job (``NULL``, as before there were other stores): the chunks of a
#: job's last attempt are its result.
SCHEME = "db"


class DatabaseStore(ResultStore):
    """The result store in the app's own database: the chunks of ``async_request_results``.

    The default: the embedded mode and a deployment with one database need no
    other service. Its leftovers are found by one query of the jobs table
    (:func:`delete_stale`), not listed.

    :param jobs: the app's job store in this process.
    :param execute: runs each INSERT of a chunk; by default in a transaction of
        its own, or a transactional worker's session's.
    """

    scheme = SCHEME

    def __init__(self, jobs: JobStore, execute: Execute | None = None) -> None:
        self.jobs = jobs
        self.execute = execute or autocommitted(jobs)

    def describe(self) -> str:
        return "database"

    def location_of(self, name: str) -> str:
        return f"{SCHEME}:{name}"

    def owns(self, location: str) -> bool:
        return location.startswith(f"{SCHEME}:")

    def _key(self, location: str) -> tuple[int, int]:
        key = parse_name(location.partition(":")[2]) if self.owns(location) else None
        if key is None:
            raise ResultMissing(f"{location!r} is not a result of the database.")
        return key

    def write(
        self,
        name: str,
        chunks: Iterable[bytes],
        *,
        content_type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Written:
        key = parse_name(name)
        if key is None:
            raise ValueError(f"{name!r} is not a result's name (see storage.result_name).")
        size, sha256, _ = write(self.execute, *key, chunks)
        # Recorded as no location: the job's own chunks.
        return Written(size, sha256)

    def read(self, location: str, start: int, stop: int) -> Iterator[bytes]:
        return read(self.jobs, *self._key(location), start, stop)

    def delete(self, location: str) -> None:
        job_id, attempt = self._key(location)
        self.jobs.rowcount(DELETE_ATTEMPT, {"job_id": job_id, "attempt": attempt})

    def leftovers(self) -> Iterator[Leftover]:
        # Found and deleted by delete_stale's query, whatever store the app uses now.
        return iter(())


def database_location(job_id: int, attempt: int) -> str:
    """The location of the database's result of ``job_id``'s ``attempt``."""
    return f"{SCHEME}:{result_name(job_id, attempt)}"
