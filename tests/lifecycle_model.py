"""A model-based test of the lifecycle: random interleavings against a plain-Python reference.

The machine drives every transition of :mod:`flask_async_request.lifecycle`
(create, claim, progress, finish, fail, reschedule, cancel, lease expiry and
sweep, retry, purge) in any order, as racing workers, sweepers and clients
would, and after every step checks the table against the reference model:

* every row has the status and attempt count the model says;
* a finished job never changes again until it is retried or purged;
* an attempt that lost its job (cancelled, taken over, finished) writes nothing;
* every end state was announced exactly once: signal, callback and (on
  PostgreSQL) NOTIFY;
* purge removes exactly the jobs its rules name;
* every job ends: the runner ends each job it claims, even when the database
  refuses its reply or the library's own code raises (a lost connection aside,
  which leaves the job to its lease), and a processing job always has a lease
  for the sweeper to find.

It is run on SQLite by the unit tests and on PostgreSQL by the integration tests.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    multiple,
    rule,
)

from flask_async_request import (
    AsyncRequest,
    Job,
    JobStatus,
    lifecycle,
    maintenance,
    retention,
    runner,
    signals,
)
from flask_async_request.exceptions import JobFinished, JobNotFailed, JobNotFound
from flask_async_request.outcomes import Outcome, failure
from flask_async_request.statements import CHANNEL
from flask_async_request.store import JobStore
from flask_async_request.values import utcnow

#: Retries allowed after a lost worker, in the machine's app.
RETRY = 1
LEASE = timedelta(minutes=5)

#: What can go wrong when the runner runs a job: nothing, a reply no driver can
#: encode, a finish the database refuses, a signal receiver that raises in the
#: library's own code, or a connection lost while finishing.
FAULTS = ("none", "refused_reply", "refused_finish", "raising_receiver", "lost_connection")


def _refuse_processed(real: Callable[..., Any]) -> Callable[..., Any]:
    """``lifecycle.finish`` as the database runs it when it refuses every reply."""

    def finish(store: Any, job_id: int, attempt: int, outcome: Outcome, **options: Any) -> Any:
        if outcome.status is JobStatus.PROCESSED:
            raise sa.exc.DataError("UPDATE async_request_jobs ...", {}, Exception("refused"))
        return real(store, job_id, attempt, outcome, **options)

    return finish


def _lose_connection(
    store: Any, job_id: int, attempt: int, outcome: Outcome, **options: Any
) -> Any:
    raise sa.exc.OperationalError(
        "UPDATE async_request_jobs ...", {}, Exception("gone"), connection_invalidated=True
    )


def _raise(sender: Any, **extra: Any) -> None:
    raise RuntimeError("a receiver broke")


@dataclasses.dataclass
class ModelJob:
    """What the reference model knows of one job."""

    status: JobStatus = JobStatus.WAITING
    attempts: int = 0
    lease_expired: bool = False
    #: Whether the job has a callback url.
    callback: bool = False
    #: The stored reply of a finished job: (status code, body).
    reply: tuple[int | None, str | None] | None = None


@dataclasses.dataclass(frozen=True)
class Run:
    """One worker's claim of a job: it may write only while its attempt holds it."""

    job_id: int
    attempt: int


def make_app(database_url: str) -> Flask:
    """The machine's app: eager Celery, one retry, every waiting job stale at once."""
    app = Flask("lifecycle_model")
    app.config.update(
        TESTING=True,
        SECRET_KEY="lifecycle-model-secret-key-long-enough-for-hs256",
        SQLALCHEMY_DATABASE_URI=database_url,
        CELERY={"task_always_eager": True},
        ASYNC_REQUEST_RETRY=RETRY,
        ASYNC_REQUEST_WAITING_TIMEOUT=1e-6,
    )
    db = SQLAlchemy()
    db.init_app(app)
    AsyncRequest(app)
    with app.app_context():
        db.drop_all()
        db.create_all()
    return app


class LifecycleMachine(RuleBasedStateMachine):
    """Drives the lifecycle; subclasses give :attr:`app` and :attr:`job_store_of`."""

    app: Flask
    #: The job store of an app (the ``internals`` fixture's ``job_store``).
    job_store_of: Callable[[Flask], JobStore]

    jobs = Bundle("jobs")
    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        self.context = self.app.app_context()
        self.context.push()
        self.store = self.job_store_of(self.app)
        self.store.rowcount(sa.delete(Job), {})
        self.model: dict[int, ModelJob] = {}
        #: End states as the model expects them announced: (job id, status), in order.
        self.expected_ends: list[tuple[int, JobStatus]] = []
        #: Jobs whose callbacks the model expects queued, in order.
        self.expected_callbacks: list[int] = []
        self.signalled: list[tuple[int, JobStatus]] = []
        self.callbacks: list[int] = []
        self.published: list[int] = []
        self._receivers = [
            (signals.job_finished, self._recorder(JobStatus.PROCESSED)),
            (signals.job_failed, self._recorder(JobStatus.FAILED)),
            (signals.job_cancelled, self._recorder(JobStatus.CANCELLED)),
        ]
        # Only this app's ends: a job of another test's app, still running in a
        # thread of this process, may end meanwhile.
        for signal, receiver in self._receivers:
            signal.connect(receiver, sender=self.app)
        self._patch = pytest.MonkeyPatch()
        self._patch.setattr(lifecycle, "queue_callback", self.callbacks.append)
        self._patch.setattr(
            maintenance, "publish", lambda message, **options: self.published.append(message.job_id)
        )
        self.notified: list[int] = []
        self.listener = self._listen()
        #: The attempt the runner last returned from, by job: it may not be left processing.
        self.ran: dict[int, int] = {}

    def _recorder(self, status: JobStatus) -> Callable[..., None]:
        def record(sender: Flask, job_id: int, **extra: Any) -> None:
            self.signalled.append((job_id, status))

        return record

    def _listen(self) -> Any:
        """A LISTEN connection on PostgreSQL (with psycopg), to see the ends' NOTIFYs."""
        if not self.store.listen:
            return None
        connection = self.store.engine.raw_connection()
        connection.driver_connection.execute(f"LISTEN {CHANNEL}")  # type: ignore[union-attr]
        return connection

    def teardown(self) -> None:
        for signal, receiver in self._receivers:
            signal.disconnect(receiver)
        self._patch.undo()
        if self.listener is not None:
            self.listener.driver_connection.execute(f"UNLISTEN {CHANNEL}")
            self.listener.close()
        self.app.extensions["sqlalchemy"].session.remove()
        self.context.pop()

    # The model's bookkeeping --------------------------------------------------------------

    def _ended(self, job_id: int, status: JobStatus, reply: tuple[int | None, str | None]) -> None:
        job = self.model[job_id]
        job.status, job.reply, job.lease_expired = status, reply, False
        self.expected_ends.append((job_id, status))
        if job.callback:
            self.expected_callbacks.append(job_id)

    def _holds(self, run: Run) -> bool:
        job = self.model.get(run.job_id)
        return (
            job is not None and job.status is JobStatus.PROCESSING and job.attempts == run.attempt
        )

    # Rules --------------------------------------------------------------------------------

    @rule(target=jobs, callback=st.booleans())
    def create(self, callback: bool) -> int:
        job = lifecycle.new_job(
            "tests.workers:Echo",
            {"args": [], "kwargs": {}},
            callback_url="http://127.0.0.1:9/hook" if callback else None,
        )
        lifecycle.insert(self.store, job)
        self.model[job.id] = ModelJob(callback=callback)
        self.ran.pop(job.id, None)
        return job.id

    @rule(target=runs, job_id=jobs)
    def claim(self, job_id: int) -> Any:
        claimed = lifecycle.claim(self.store, job_id, LEASE)
        job = self.model.get(job_id)
        if job is None or job.status is not JobStatus.WAITING:
            assert claimed is None
            return multiple()
        assert claimed is not None
        job.status, job.attempts, job.lease_expired = JobStatus.PROCESSING, job.attempts + 1, False
        assert claimed.attempt == job.attempts
        return Run(job_id, claimed.attempt)

    @rule(target=runs, job_id=jobs, fault=st.sampled_from(FAULTS))
    def run(self, job_id: int, fault: str) -> Any:
        """A worker runs the job through the runner, with one fault of the database or library."""
        job = self.model.get(job_id)
        claimable = job is not None and job.status is JobStatus.WAITING
        with pytest.MonkeyPatch.context() as patch:
            if fault == "refused_reply":
                patch.setattr(runner, "normalize_reply", lambda reply: (200, "\ud800", None))
            elif fault == "refused_finish":
                patch.setattr(lifecycle, "finish", _refuse_processed(lifecycle.finish))
            elif fault == "lost_connection":
                patch.setattr(lifecycle, "finish", _lose_connection)
            elif fault == "raising_receiver":
                signals.job_started.connect(_raise)
            try:
                if fault == "lost_connection" and claimable:
                    with pytest.raises(sa.exc.OperationalError):
                        runner.run_job(job_id)
                    status = None
                else:
                    status = runner.run_job(job_id)
            finally:
                signals.job_started.disconnect(_raise)
        if job is None or not claimable:
            assert status is None
            return multiple()
        job.status, job.attempts, job.lease_expired = JobStatus.PROCESSING, job.attempts + 1, False
        attempt = Run(job_id, job.attempts)
        if fault == "lost_connection":
            # Left to its lease, and the sweeper: the run is as good as a lost worker.
            return attempt
        self.ran[job_id] = attempt.attempt
        ended = JobStatus.PROCESSED if fault == "none" else JobStatus.FAILED
        assert status is ended
        self._ended(job_id, ended, (200 if fault == "none" else 500, None))
        return multiple()

    @rule(run=runs, fraction=st.floats(0, 1))
    def progress(self, run: Run, fraction: float) -> None:
        held = lifecycle.set_progress(self.store, run.job_id, run.attempt, fraction, "working")
        assert held == self._holds(run)

    @rule(run=runs, succeed=st.booleans())
    def finish(self, run: Run, succeed: bool) -> None:
        outcome = Outcome(JobStatus.PROCESSED, 200, "done") if succeed else failure("it broke")
        holds = self._holds(run)
        ended = lifecycle.finish(self.store, run.job_id, run.attempt, outcome)
        assert (ended is not None) == holds
        if holds:
            self._ended(run.job_id, outcome.status, (outcome.status_code, outcome.body))

    @rule(run=consumes(runs))
    def reschedule(self, run: Run) -> None:
        holds = self._holds(run)
        changed = lifecycle.reschedule(self.store, run.job_id, run.attempt, utcnow())
        assert changed == holds
        if holds:
            self.model[run.job_id].status = JobStatus.WAITING

    @rule(job_id=jobs)
    def cancel(self, job_id: int) -> None:
        job = self.model.get(job_id)
        if job is None:
            with pytest.raises(JobNotFound):
                lifecycle.cancel(self.store, job_id)
        elif job.status.finished:
            with pytest.raises(JobFinished):
                lifecycle.cancel(self.store, job_id)
        else:
            ended = lifecycle.cancel(self.store, job_id)
            assert ended.reply.status_code == lifecycle.CANCELLED_STATUS_CODE
            self._ended(job_id, JobStatus.CANCELLED, (499, lifecycle.CANCELLED_BODY))

    @rule(run=runs)
    def lose_worker(self, run: Run) -> None:
        """The run's worker dies: the job's lease runs out (if the run still holds it)."""
        job_id = run.job_id
        self.store.rowcount(
            sa.update(Job)
            .where(Job.id == job_id, Job.status == JobStatus.PROCESSING)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1)),
            {},
        )
        job = self.model.get(job_id)
        if job is not None and job.status is JobStatus.PROCESSING:
            job.lease_expired = True

    @rule()
    def sweep(self) -> None:
        self.published.clear()
        result = maintenance.sweep_jobs()
        requeued = failed = 0
        for job_id, job in sorted(self.model.items()):
            if job.status is not JobStatus.PROCESSING or not job.lease_expired:
                continue
            if job.attempts <= RETRY:
                job.status, job.lease_expired = JobStatus.WAITING, False
                requeued += 1
            else:
                self._ended(job_id, JobStatus.FAILED, (500, None))
                failed += 1
        assert (result.requeued, result.failed) == (requeued, failed)
        waiting = sorted(i for i, job in self.model.items() if job.status is JobStatus.WAITING)
        # Requeued jobs are published once by the requeue, and every waiting job
        # (all are stale here) once more.
        assert sorted(set(self.published)) == waiting

    @rule(job_id=jobs)
    def retry(self, job_id: int) -> None:
        job = self.model.get(job_id)
        if job is None:
            with pytest.raises(JobNotFound):
                lifecycle.reset_for_retry(self.store, job_id)
        elif job.status is not JobStatus.FAILED:
            with pytest.raises(JobNotFailed):
                lifecycle.reset_for_retry(self.store, job_id)
        else:
            lifecycle.reset_for_retry(self.store, job_id)
            self.model[job_id] = ModelJob(callback=job.callback)
            self.ran.pop(job_id, None)

    @rule(recent=st.booleans())
    def purge(self, recent: bool) -> None:
        """Purge finished jobs: all of them, or only those older than an hour (none here)."""
        age = timedelta(0) if recent else timedelta(hours=1)
        deleted = retention.delete_matching(self.store, retention.purge_filter(age), batch_size=3)
        gone = [i for i, job in self.model.items() if job.status.finished] if recent else []
        assert deleted == len(gone)
        for job_id in gone:
            del self.model[job_id]

    # Invariants ---------------------------------------------------------------------------

    @invariant()
    def rows_match_the_model(self) -> None:
        rows = self.store.all(
            sa.select(Job.id, Job.status, Job.attempts, Job.status_code, Job.response), {}
        )
        stored = {row.id: row for row in rows}
        assert sorted(stored) == sorted(self.model)
        for job_id, job in self.model.items():
            row = stored[job_id]
            assert (JobStatus(row.status), row.attempts) == (job.status, job.attempts), job_id
            if job.reply is not None and job.status.finished:
                code, body = job.reply
                assert row.status_code == code
                if body is not None:
                    assert row.response == body
            if not job.status.finished:
                assert row.status_code is None or job.status is JobStatus.PROCESSING

    @invariant()
    def every_job_ends(self) -> None:
        rows = self.store.all(sa.select(Job.id, Job.status, Job.attempts, Job.lease_expires_at), {})
        for row in rows:
            if JobStatus(row.status) is JobStatus.PROCESSING:
                # The sweeper ends or requeues it once this runs out.
                assert row.lease_expires_at is not None, row.id
                # No attempt the runner returned from is left running.
                assert self.ran.get(row.id) != row.attempts, row.id

    @invariant()
    def every_end_announced_once(self) -> None:
        assert self.signalled == self.expected_ends
        assert self.callbacks == self.expected_callbacks
        if self.listener is not None:
            self._drain_notifications()
            assert self.notified == [i for i, _ in self.expected_ends]

    def _drain_notifications(self) -> None:
        """Collect the NOTIFYs sent so far: those still due, then any extra one."""
        connection = self.listener.driver_connection
        deadline = time.monotonic() + 2.0
        while len(self.notified) < len(self.expected_ends) and time.monotonic() < deadline:
            left = max(0.01, deadline - time.monotonic())
            for notification in connection.notifies(timeout=left, stop_after=1):
                self._note(notification.payload)
        for notification in connection.notifies(timeout=0.01):
            self._note(notification.payload)

    def _note(self, payload: str) -> None:
        # "c<id>" announces a change that event streams follow (a progress, a
        # reschedule, a requeue), not an end.
        if not payload.startswith("c"):
            self.notified.append(int(payload))
