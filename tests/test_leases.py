"""Leases of running jobs: renewed while held, fenced by the attempt, given up, deadlines."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta

import pytest
from flask import Flask, current_app

from flask_async_request import Job, JobStatus, lifecycle
from flask_async_request.leases import LeaseKeeper
from flask_async_request.store import JobStore
from flask_async_request.values import as_utc, utcnow
from tests import workers
from tests.conftest import INTERNALS, AppFactory, add_job, reload_job

#: How long a test waits for the keeper's thread to do what it must (not a measured time).
PATIENCE = 20.0


def eventually(condition: Callable[[], bool]) -> None:
    """Wait until ``condition()`` holds; fail the test if it never does."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, "the lease keeper never did it"
        time.sleep(0.02)


@pytest.fixture
def store(app: Flask) -> JobStore:
    """The app's job store, which the keeper renews leases through."""
    return INTERNALS.job_store(current_app)


@pytest.fixture
def keeper() -> Iterator[LeaseKeeper]:
    """A keeper of the test's own, whose thread ends with the test."""
    keeper = LeaseKeeper()
    yield keeper
    # Its thread runs while the keeper belongs to this process.
    keeper._pid = None
    keeper._wake.set()


@pytest.fixture
def renewals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The (job id, attempt) of each renewal the keeper makes, which still happen."""
    calls: list[tuple[int, int]] = []
    lock = threading.Lock()
    real = lifecycle.renew

    def renew(store: JobStore, job_id: int, attempt: int, lease: timedelta) -> bool:
        with lock:
            calls.append((job_id, attempt))
        return real(store, job_id, attempt, lease)

    monkeypatch.setattr(lifecycle, "renew", renew)
    return calls


def running(attempts: int = 1, lease_from_now: float = 60) -> Job:
    """A job claimed by attempt ``attempts``, leased until ``lease_from_now`` seconds from now."""
    job = add_job(status=JobStatus.PROCESSING)
    job.attempts = attempts
    job.lease_expires_at = utcnow() + timedelta(seconds=lease_from_now)
    current_app.extensions["sqlalchemy"].session.commit()
    return job


def lease_of(job_id: int) -> datetime:
    lease = reload_job(job_id).lease_expires_at
    assert lease is not None
    return as_utc(lease)


def test_a_held_lease_is_renewed(store: JobStore, keeper: LeaseKeeper) -> None:
    """A held job's lease is pushed forward, by its length from each renewal."""
    job = running(lease_from_now=600)
    before = lease_of(job.id)
    keeper.hold(store, job.id, 1, timedelta(seconds=0.3))
    eventually(lambda: lease_of(job.id) != before)
    # Set to 0.3 s past a renewal, not left at the claim's ten minutes.
    assert lease_of(job.id) < before - timedelta(minutes=5)


def test_a_renewal_is_fenced_by_the_attempt(
    store: JobStore, keeper: LeaseKeeper, renewals: list[tuple[int, int]]
) -> None:
    """A keeper holding attempt 1 of a job now run by attempt 2 does not extend its lease."""
    job = running(attempts=2)
    before = lease_of(job.id)
    keeper.hold(store, job.id, 1, timedelta(seconds=0.3))
    eventually(lambda: len(renewals) >= 2)
    assert lease_of(job.id) == before


def test_a_released_lease_is_not_renewed(
    store: JobStore, keeper: LeaseKeeper, renewals: list[tuple[int, int]]
) -> None:
    """After release, the job's lease is left alone while other held jobs' are renewed."""
    released, held = running(), running()
    keeper.hold(store, released.id, 1, timedelta(seconds=0.6))
    keeper.release(store, released.id)
    keeper.hold(store, held.id, 1, timedelta(seconds=0.3))
    eventually(lambda: renewals.count((held.id, 1)) >= 3)
    assert (released.id, 1) not in renewals


def test_holding_a_job_does_not_wake_an_idle_keeper(store: JobStore, keeper: LeaseKeeper) -> None:
    """Once idle, the keeper wakes before a job held since is due: a hold needs no wake."""
    first, second = running(), running()
    keeper.hold(store, first.id, 1, timedelta(seconds=60))
    keeper.release(store, first.id)
    keeper._wake.set()
    # Cleared by the thread once it has found nothing held and chosen when to wake.
    eventually(lambda: not keeper._wake.is_set())
    keeper.hold(store, second.id, 1, timedelta(seconds=60))
    assert not keeper._wake.is_set()
    keeper.release(store, second.id)


def test_releasing_a_job_not_held_does_nothing(store: JobStore, keeper: LeaseKeeper) -> None:
    """release() of a job never held is no error."""
    keeper.release(store, 12345)
    assert keeper.give_up(store) == []


def test_give_up_ends_the_leases_held_on_its_store(
    make_app: AppFactory, store: JobStore, keeper: LeaseKeeper
) -> None:
    """give_up ends the store's held leases now and names them; another store's are kept."""
    mine, taken_over = running(), running(attempts=2)
    keeper.hold(store, mine.id, 1, timedelta(minutes=5))
    keeper.hold(store, taken_over.id, 1, timedelta(minutes=5))
    other_app = make_app()
    with other_app.app_context():
        other_store = INTERNALS.job_store(current_app)
        other_job = running()
        keeper.hold(other_store, other_job.id, 1, timedelta(minutes=5))

    assert keeper.give_up(store) == [mine.id]
    assert lease_of(mine.id) <= utcnow()
    assert lease_of(taken_over.id) > utcnow()
    # Given up once: no longer held.
    assert keeper.give_up(store) == []
    with other_app.app_context():
        assert keeper.give_up(other_store) == [other_job.id]


def test_a_deadline_is_called_once(store: JobStore, keeper: LeaseKeeper) -> None:
    """At a held job's time limit, on_deadline is called, once."""
    calls: list[int] = []
    job = running()
    keeper.hold(
        store,
        job.id,
        1,
        timedelta(seconds=0.3),
        time_limit=0.1,
        on_deadline=lambda: calls.append(job.id),
    )
    eventually(lambda: bool(calls))
    # Several renewals later, still once.
    later = running()
    seen: list[int] = []
    keeper.hold(
        store, later.id, 1, timedelta(minutes=5), time_limit=0.5, on_deadline=lambda: seen.append(1)
    )
    eventually(lambda: bool(seen))
    assert calls == [job.id]


def test_a_job_released_before_its_deadline_is_not_called(
    store: JobStore, keeper: LeaseKeeper
) -> None:
    """A job released before its time limit never has on_deadline called."""
    called: list[str] = []
    early, late = running(), running()
    keeper.hold(
        store,
        early.id,
        1,
        timedelta(minutes=5),
        time_limit=0.2,
        on_deadline=lambda: called.append("early"),
    )
    keeper.release(store, early.id)
    keeper.hold(
        store,
        late.id,
        1,
        timedelta(minutes=5),
        time_limit=0.4,
        on_deadline=lambda: called.append("late"),
    )
    eventually(lambda: bool(called))
    assert called == ["late"]


def test_a_failing_renewal_is_logged_and_renewals_go_on(
    store: JobStore,
    keeper: LeaseKeeper,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A renewal that raises is logged as a warning, and the next one is still made."""
    tries: list[int] = []
    real = lifecycle.renew

    def flaky(store: JobStore, job_id: int, attempt: int, lease: timedelta) -> bool:
        tries.append(job_id)
        if len(tries) == 1:
            raise RuntimeError("database hiccup")
        return real(store, job_id, attempt, lease)

    monkeypatch.setattr(lifecycle, "renew", flaky)
    job = running(lease_from_now=1)
    before = lease_of(job.id)
    with caplog.at_level(logging.WARNING, logger="flask_async_request"):
        keeper.hold(store, job.id, 1, timedelta(seconds=0.3))
        eventually(lambda: lease_of(job.id) != before)
    assert f"Could not renew the lease of job {job.id}." in caplog.text


def test_a_failing_deadline_is_logged(
    store: JobStore, keeper: LeaseKeeper, caplog: pytest.LogCaptureFixture
) -> None:
    """An on_deadline that raises is logged with the job's id; the keeper goes on."""
    done: list[int] = []

    def broken() -> None:
        raise RuntimeError("cannot end it")

    first, second = running(), running()
    with caplog.at_level(logging.ERROR, logger="flask_async_request"):
        keeper.hold(store, first.id, 1, timedelta(minutes=5), time_limit=0.1, on_deadline=broken)
        keeper.hold(
            store,
            second.id,
            1,
            timedelta(minutes=5),
            time_limit=0.3,
            on_deadline=lambda: done.append(1),
        )
        eventually(lambda: bool(done))
    assert f"Job {first.id}: could not end it at its time limit." in caplog.text


# Through the runner ---------------------------------------------------------------------


def test_lease_is_renewed_while_the_worker_runs(make_app: AppFactory) -> None:
    """A job running longer than its lease keeps it renewed."""
    app = make_app(ASYNC_REQUEST_LEASE=0.6)
    with app.app_context():
        job = Job.create_and_enqueue(workers.LeaseProbe, 1.0)
        assert job.response is not None
        probe = json.loads(job.response)
        assert probe["after"] > probe["before"]
        assert job.lease_expires_at is None


def test_short_job_costs_no_renewal(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job done within a third of its lease is never renewed."""
    renewals: list[int] = []
    monkeypatch.setattr(
        LeaseKeeper,
        "_renew",
        staticmethod(lambda engine, job_id, attempt, lease: renewals.append(job_id)),
    )
    app = make_app(ASYNC_REQUEST_LEASE=60)
    with app.app_context():
        for _ in range(5):
            Job.create_and_enqueue(workers.Echo)
    assert renewals == []
