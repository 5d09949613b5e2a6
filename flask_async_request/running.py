"""The link between a running worker and its job row: progress and cancellation."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from . import lifecycle
from .exceptions import JobCancelled, ReceiverError, StorageError
from .outcomes import out_of_reach, storage_message
from .signals import job_progress

if TYPE_CHECKING:
    from flask import Flask

    from .store import JobStore

logger = logging.getLogger("flask_async_request")

#: Progress is written, and cancellation checked, at most this often (seconds).
CHECK_INTERVAL = 0.2


class RunContext:
    """What a worker's :meth:`~Worker.progress` and :attr:`~Worker.cancelled` talk to.

    Progress may be reported in a tight loop: a report costs a clock read, and
    at most one short UPDATE goes to the database per :data:`CHECK_INTERVAL`.
    That UPDATE is fenced by the attempt, so it also tells when the job was
    cancelled (or taken over after a lost lease): the worker is then stopped
    with :class:`JobCancelled`. With ``writes=False`` progress is only checked
    against cancellation, not stored.

    A write that fails on a lost connection is skipped (the next report tries
    again, and a job whose worker stays cut off loses its lease); one the
    database refuses raises :class:`StorageError` in the worker, with the
    library's message, which fails the job.
    """

    def __init__(
        self, app: Flask, store: JobStore, job_id: int, attempt: int, *, writes: bool = True
    ) -> None:
        self.app = app
        self.store = store
        self.job_id = job_id
        self.attempt = attempt
        self.writes = writes
        self._last_write = 0.0
        self._last_check = 0.0
        self._cancelled = False

    def report(self, fraction: float, message: str | None) -> None:
        """Store progress if the last write is old enough; stop a cancelled job."""
        if self._cancelled:
            raise JobCancelled(f"Job {self.job_id} was cancelled.")
        now = time.monotonic()
        if now - self._last_write < CHECK_INTERVAL:
            return
        self._last_write = self._last_check = now
        try:
            if self.writes:
                held = lifecycle.set_progress(
                    self.store, self.job_id, self.attempt, fraction, message
                )
            else:
                held = lifecycle.held(self.store, self.job_id, self.attempt)
        except Exception as e:
            if out_of_reach(e):
                logger.warning(
                    "Job %s: its progress could not be stored (%s); trying again at the next"
                    " report.",
                    self.job_id,
                    type(e).__name__,
                    exc_info=True,
                )
                return
            logger.exception("Job %s: its progress could not be stored.", self.job_id)
            raise StorageError(storage_message("The progress report", e), self.job_id) from None
        if not held:
            self._cancelled = True
            raise JobCancelled(f"Job {self.job_id} was cancelled.")
        try:
            job_progress.send(self.app, job_id=self.job_id, progress=fraction, message=message)
        except Exception as e:
            logger.exception("Job %s: a receiver of job_progress raised.", self.job_id)
            raise ReceiverError(
                f"The job could not be run: a receiver of job_progress raised {type(e).__name__}"
                " (details are in the worker's log).",
                self.job_id,
            ) from None

    def cancelled(self) -> bool:
        """Whether the job is no longer this run's (checked at most every interval)."""
        if not self._cancelled:
            now = time.monotonic()
            if now - self._last_check >= CHECK_INTERVAL:
                self._last_check = now
                try:
                    self._cancelled = not lifecycle.held(self.store, self.job_id, self.attempt)
                except Exception as e:
                    if not out_of_reach(e):
                        logger.exception("Job %s: its status could not be read.", self.job_id)
                        raise StorageError(
                            f"The job's status could not be read ({type(e).__name__};"
                            " details are in the worker's log).",
                            self.job_id,
                        ) from None
                    # Not known to be cancelled: asked again at the next check.
                    logger.warning(
                        "Job %s: whether it was cancelled could not be read (%s).",
                        self.job_id,
                        type(e).__name__,
                    )
        return self._cancelled
