"""Run an app's jobs inline in its tests, through the same code path as a worker.

A :class:`JobRunner` bound to an app keeps the messages the app publishes
instead of sending them to a broker (none is needed, whatever ``CELERY`` says),
so a view that starts a job answers 202 with the job still ``waiting``, as it
would in production. The test then runs the jobs, each as a worker does (claim,
run, store the reply: ``flask_async_request.runner.run_job``), and polls for
the stored reply::

    def test_thumbnail(app):
        client = app.test_client()
        with JobRunner(app) as jobs:
            started = client.post("/thumbnails/42")
            assert started.status_code == 202
            jobs.run_pending()
            assert client.get(started.json["url"]).status_code == 200

With pytest, the ``async_jobs`` fixture is such a runner for the test's ``app``
fixture (see ``flask_async_request.pytest_plugin``).
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, NamedTuple

import sqlalchemy as sa
from flask import Flask

from .callbacks import deliver
from .client import wait_for
from .client_polling import JobResult, start_of
from .exceptions import AsyncRequestError
from .models import Job, JobStatus
from .runner import run_job
from .state import get_state

__all__ = ["JobRun", "JobRunner"]


class JobRun(NamedTuple):
    """One message a :class:`JobRunner` consumed."""

    job_id: int
    #: How the job was left (``processed``, ``failed``, or ``waiting`` for a retry);
    #: ``None`` when there was nothing to run: cancelled, finished or deleted before.
    status: JobStatus | None


class JobRunner:
    """Keeps the messages of ``app`` and runs their jobs when a test says so.

    It holds the app from its creation until :meth:`close` (or the end of its
    ``with`` block). Jobs run in the calling thread, each in an app context of
    its own as in a worker; a retried job is published again, and so is a job
    that a job enqueues: :meth:`run_pending` runs those too.

    :raises RuntimeError: another runner holds the app already.
    """

    def __init__(self, app: Flask) -> None:
        state = get_state(app)
        if state.outbox is not None:
            raise RuntimeError(
                "A JobRunner holds this app's messages already; close it before binding"
                " another one (the async_jobs fixture makes one per test)."
            )
        self.app = app
        self._lock = threading.Lock()
        self._messages: collections.deque[int] = collections.deque()
        self._callbacks: collections.deque[int] = collections.deque()
        state.outbox = self

    # The outbox the app publishes to (see broker.publish).

    def publish(self, job_id: int, countdown: float | None) -> None:
        """Keep the message that runs job ``job_id`` (a retry's ``countdown`` is not waited)."""
        with self._lock:
            self._messages.append(job_id)

    def queue_callback(self, job_id: int) -> None:
        """Keep the message that delivers job ``job_id``'s completion callback."""
        with self._lock:
            self._callbacks.append(job_id)

    # What a test uses.

    @property
    def pending(self) -> list[int]:
        """The ids of the jobs whose messages wait to be run, oldest first."""
        with self._lock:
            return list(self._messages)

    @property
    def callbacks(self) -> list[int]:
        """The ids of the jobs whose callbacks wait to be delivered, oldest first."""
        with self._lock:
            return list(self._callbacks)

    def run_pending(self) -> list[JobRun]:
        """Run every pending job in the order its message was published.

        Messages published meanwhile (retries, jobs that jobs enqueue) are run
        too, until none is left.

        :returns: what each message did, in order.
        """
        runs = []
        while (job_id := self._take()) is not None:
            runs.append(JobRun(job_id, self._run(job_id)))
        return runs

    def run(self, job: int | str | Job | Any) -> JobStatus | None:
        """Run one job now, whatever its place among the pending ones.

        :param job: its id, its token, the :class:`~flask_async_request.Job`, or
            the 202 response of the view that started it.
        :returns: the status the job was left in, or ``None`` when there was
            nothing to run (cancelled, finished or deleted before).
        :raises InvalidToken: a token that does not verify.
        """
        job_id = self._job_id(job)
        with self._lock:
            kept = [other for other in self._messages if other != job_id]
            self._messages.clear()
            self._messages.extend(kept)
        return self._run(job_id)

    def jobs(self) -> list[Job]:
        """Every job of the app as its row is now, oldest first."""
        with self.app.app_context():
            session = get_state(self.app).db.session
            return list(session.scalars(sa.select(Job).order_by(Job.id)))

    def deliver_callbacks(self) -> list[bool]:
        """Deliver the pending completion callbacks, once each, in order.

        :returns: for each, whether it was delivered (``False``: nothing to
            deliver, or its url was refused).
        :raises DeliveryError: a receiver could not be reached or did not answer 2xx.
        """
        delivered: list[bool] = []
        while True:
            with self._lock:
                if not self._callbacks:
                    return delivered
                job_id = self._callbacks.popleft()
            with self.app.app_context():
                delivered.append(deliver(job_id))

    def wait_for(self, response: Any, *, client: Any = None, **options: Any) -> JobResult:
        """Run the pending jobs and poll the started job's reply, as a client would.

        ``response`` is the 202 of the view that started the job; polls go
        through ``client`` (default: a new test client of the app; give the one
        that started the job where cookies matter). Other keyword arguments are
        those of :func:`flask_async_request.client.wait_for`.

        :raises AsyncRequestError: the job is pending and nothing is left to run it,
            or the status endpoint refused the poll.
        """
        session = _RunningClient(self, client if client is not None else self.app.test_client())
        options.setdefault("long_poll", 0)
        return wait_for(response, session=session, **options)

    def close(self) -> None:
        """Give the app back its broker; messages not run are dropped."""
        state = get_state(self.app)
        if state.outbox is self:
            state.outbox = None
        with self._lock:
            self._messages.clear()
            self._callbacks.clear()

    def __enter__(self) -> JobRunner:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # Helpers.

    def _take(self) -> int | None:
        with self._lock:
            return self._messages.popleft() if self._messages else None

    def _run(self, job_id: int) -> JobStatus | None:
        # An app context of its own, as a worker's task pushes: its own session.
        with self.app.app_context():
            return run_job(job_id)

    def _job_id(self, job: object) -> int:
        if isinstance(job, Job):
            job_id = job.id
            if job_id is None:
                raise ValueError("The job has no id: it was never stored.")
            return job_id
        if isinstance(job, int) and not isinstance(job, bool):
            return job
        if not isinstance(job, str):
            job = start_of(job)[1]
        return get_state(self.app).verify_token(job).job_id


class _RunningClient:
    """A test client whose every poll first runs the pending jobs."""

    def __init__(self, runner: JobRunner, client: Any) -> None:
        self._runner = runner
        self._client = client
        # The client calls the app in this process: polls take no network timeout.
        self.application: Callable[..., Any] = client.application

    def get(self, url: str, **kwargs: Any) -> Any:
        ran = self._runner.run_pending()
        response = self._client.get(url, **kwargs)
        if response.status_code == 202 and not ran:
            raise AsyncRequestError(
                f"The job at {url} is pending, and the JobRunner holds no message to run it:"
                " was it published before the runner was bound, or by another app?"
            )
        return response
