"""Per-owner limits: admission (in flight, rate) and the running cap at the claim, on SQLite."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from celery.app.task import Task
from flask import Flask, request, url_for

from flask_async_request import AsyncRequest, ConfigurationError, Job, JobStatus, OwnerLimitExceeded
from flask_async_request.limits import limit_of
from flask_async_request.runner import run_job
from flask_async_request.values import as_utc, utcnow
from flask_async_request.web import cancel_job
from tests import workers
from tests.conftest import AppFactory, current_db, json_of, reload_job

#: Who the tests' apps take the current identity to be (the X-User header in a request).
_identity: dict[str, str | None] = {"owner": "alice"}


def _owned_app(make_app: AppFactory, **config: Any) -> Flask:
    extension = AsyncRequest()
    app = make_app(extension=extension, **config)

    @extension.identity_loader
    def current_user() -> str | None:
        if request:
            return request.headers.get("X-User")
        return _identity["owner"]

    @app.post("/start")
    def start() -> Any:
        job = Job.create_and_enqueue(workers.Echo, "hi")
        return {"token": job.token, "url": url_for("async_request.job")}, 202

    return app


@pytest.fixture
def limited(make_app: AppFactory) -> Callable[..., Flask]:
    """Makes an app with the given limits, whose identity is X-User (or ``_identity``)."""
    _identity["owner"] = "alice"
    return lambda **config: _owned_app(make_app, **config)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Each job message published, with its options, instead of running it."""
    messages: list[dict[str, Any]] = []

    def record(self: Task[Any, Any], args: Any = None, kwargs: Any = None, **options: Any) -> None:
        messages.append({"args": args, **options})

    monkeypatch.setattr(Task, "apply_async", record)
    return messages


def _jobs() -> list[Job]:
    return list(current_db().session.query(Job).order_by(Job.id))


def test_in_flight_cap_refuses_the_job_past_it(
    limited: Callable[..., Flask], sent: list[dict[str, Any]]
) -> None:
    """Past the in-flight cap, OwnerLimitExceeded; nothing stored, nothing sent."""
    app = limited(ASYNC_REQUEST_OWNER_MAX_IN_FLIGHT=2)
    with app.app_context():
        Job.create_and_enqueue(workers.Echo, 1)
        Job.create_and_enqueue(workers.Echo, 2)
        with pytest.raises(OwnerLimitExceeded) as raised:
            Job.create_and_enqueue(workers.Echo, 3)
        assert raised.value.limit == "in_flight"
        assert raised.value.retry_after >= 1
        assert len(_jobs()) == 2
        assert len(sent) == 2


def test_a_finished_job_frees_its_place(
    limited: Callable[..., Flask], sent: list[dict[str, Any]]
) -> None:
    """Only waiting and processing jobs count: once one ends, another is admitted."""
    app = limited(ASYNC_REQUEST_OWNER_MAX_IN_FLIGHT=1)
    with app.app_context():
        job = Job.create_and_enqueue(workers.Echo, 1)
        with pytest.raises(OwnerLimitExceeded):
            Job.create_and_enqueue(workers.Echo, 2)
        run_job(job.id)
        Job.create_and_enqueue(workers.Echo, 2)
        assert len(_jobs()) == 2


def test_the_cap_is_per_owner(limited: Callable[..., Flask], sent: list[dict[str, Any]]) -> None:
    """Another owner, and jobs with no owner, are not held by alice's cap."""
    app = limited(ASYNC_REQUEST_OWNER_MAX_IN_FLIGHT=1)
    with app.app_context():
        Job.create_and_enqueue(workers.Echo, 1)
        _identity["owner"] = "bob"
        Job.create_and_enqueue(workers.Echo, 2)
        _identity["owner"] = None
        Job.create_and_enqueue(workers.Echo, 3)
        Job.create_and_enqueue(workers.Echo, 4)
        assert [job.owner for job in _jobs()] == ["alice", "bob", None, None]


def test_a_view_answers_429_with_retry_after(
    limited: Callable[..., Flask], sent: list[dict[str, Any]]
) -> None:
    """Any view that lets the error through answers 429, Retry-After and the envelope."""
    app = limited(ASYNC_REQUEST_OWNER_MAX_IN_FLIGHT=1)
    client = app.test_client()
    assert client.post("/start", headers={"X-User": "alice"}).status_code == 202
    refused = client.post("/start", headers={"X-User": "alice"})
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1"
    assert json_of(refused)["errors"][0]["message"].startswith("Too many jobs in flight")
    assert client.post("/start", headers={"X-User": "bob"}).status_code == 202


def test_tiers_by_callable(limited: Callable[..., Flask], sent: list[dict[str, Any]]) -> None:
    """A callable of the owner gives each owner its cap; None is no cap."""
    tiers = {"alice": 1, "bob": None}
    app = limited(ASYNC_REQUEST_OWNER_MAX_IN_FLIGHT=tiers.get)
    with app.app_context():
        Job.create_and_enqueue(workers.Echo, 1)
        with pytest.raises(OwnerLimitExceeded):
            Job.create_and_enqueue(workers.Echo, 2)
        _identity["owner"] = "bob"
        for n in range(5):
            Job.create_and_enqueue(workers.Echo, n)


def test_rate_refuses_with_the_time_left_in_the_window(
    limited: Callable[..., Flask], sent: list[dict[str, Any]]
) -> None:
    """Past the rate, 429 until the oldest job in the window leaves it."""
    app = limited(ASYNC_REQUEST_OWNER_RATE=2, ASYNC_REQUEST_OWNER_RATE_PERIOD=60)
    with app.app_context():
        for n in range(2):
            run_job(Job.create_and_enqueue(workers.Echo, n).id)
        with pytest.raises(OwnerLimitExceeded) as raised:
            Job.create_and_enqueue(workers.Echo, 3)
        assert raised.value.limit == "rate"
        assert 55 <= raised.value.retry_after <= 60
        assert len(_jobs()) == 2


def test_rate_window_slides(limited: Callable[..., Flask], sent: list[dict[str, Any]]) -> None:
    """A job created before the window does not count against the rate."""
    app = limited(ASYNC_REQUEST_OWNER_RATE=1, ASYNC_REQUEST_OWNER_RATE_PERIOD=60)
    with app.app_context():
        job = Job.create_and_enqueue(workers.Echo, 1)
        session = current_db().session
        session.get(Job, job.id).created_at = utcnow() - timedelta(seconds=61)  # type: ignore[union-attr]
        session.commit()
        Job.create_and_enqueue(workers.Echo, 2)
        assert len(_jobs()) == 2


def test_a_job_in_the_callers_transaction_is_limited_too(
    limited: Callable[..., Flask], sent: list[dict[str, Any]]
) -> None:
    """With commit=False the cap is checked in the caller's transaction, and counts its jobs."""
    app = limited(ASYNC_REQUEST_OWNER_MAX_IN_FLIGHT=2)
    with app.app_context():
        session = current_db().session
        first = Job.create_and_enqueue(workers.Echo, 1, commit=False)
        Job.create_and_enqueue(workers.Echo, 2, commit=False)
        assert first.token
        with pytest.raises(OwnerLimitExceeded):
            Job.create_and_enqueue(workers.Echo, 3, commit=False)
        session.commit()
        assert len(_jobs()) == 2
        assert len(sent) == 2


def test_an_idempotent_retry_is_limited_as_a_new_job(
    limited: Callable[..., Flask], sent: list[dict[str, Any]]
) -> None:
    """A request with an Idempotency-Key that finds its job answers it, even at the cap."""
    app = limited(ASYNC_REQUEST_OWNER_MAX_IN_FLIGHT=1)
    with app.app_context():
        job = Job.create_and_enqueue(workers.Echo, 1, idempotency_key="k1")
        again = Job.create_and_enqueue(workers.Echo, 1, idempotency_key="k1")
        assert again.id == job.id
        with pytest.raises(OwnerLimitExceeded):
            Job.create_and_enqueue(workers.Echo, 2, idempotency_key="k2")


@pytest.mark.parametrize(
    "key",
    [
        "ASYNC_REQUEST_OWNER_MAX_IN_FLIGHT",
        "ASYNC_REQUEST_OWNER_RATE",
        "ASYNC_REQUEST_OWNER_MAX_RUNNING",
    ],
)
@pytest.mark.parametrize("value", [0, -1, "3", 2.5, True])
def test_bad_limits_are_refused_at_init(make_app: AppFactory, key: str, value: Any) -> None:
    """A limit that is not None, a whole number >= 1 or a callable is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match=key):
        make_app(**{key: value})


def test_a_callable_returning_nonsense_is_a_type_error() -> None:
    """A tier callable must return a whole number or None."""
    assert limit_of(lambda owner: 3, "a") == 3
    assert limit_of(None, "a") is None
    with pytest.raises(TypeError, match="whole number"):
        limit_of(lambda owner: "many", "a")  # type: ignore[arg-type, return-value]


# The running cap ----------------------------------------------------------------------------


def _set_status(job_id: int, status: JobStatus) -> None:
    session = current_db().session
    session.get(Job, job_id).status = status  # type: ignore[union-attr]
    session.commit()


def test_a_claim_past_the_running_cap_parks_the_job(
    limited: Callable[..., Flask], sent: list[dict[str, Any]]
) -> None:
    """With alice's one job processing, her next is parked: waiting, due later, nothing sent."""
    app = limited(ASYNC_REQUEST_OWNER_MAX_RUNNING=1, ASYNC_REQUEST_OWNER_DEFER=30)
    with app.app_context():
        running = Job.create_and_enqueue(workers.Echo, 1)
        waiting = Job.create_and_enqueue(workers.Echo, 2)
        _set_status(running.id, JobStatus.PROCESSING)
        sent.clear()
        before = utcnow()
        assert run_job(waiting.id) is None
        job = reload_job(waiting.id)
        assert job.status is JobStatus.WAITING
        assert job.attempts == 0
        assert timedelta(seconds=29) <= as_utc(job.due_at) - before <= timedelta(seconds=31)
        assert sent == []


def test_an_end_of_the_owners_job_wakes_the_parked_job_that_waited_longest(
    limited: Callable[..., Flask], sent: list[dict[str, Any]]
) -> None:
    """As alice's running job ends, her first parked job is due now and sent; one job only."""
    app = limited(ASYNC_REQUEST_OWNER_MAX_RUNNING=1)
    with app.app_context():
        running = Job.create_and_enqueue(workers.Echo, 1)
        parked = [Job.create_and_enqueue(workers.Echo, n) for n in (2, 3)]
        _set_status(running.id, JobStatus.PROCESSING)
        for job in parked:
            assert run_job(job.id) is None
        sent.clear()
        _set_status(running.id, JobStatus.WAITING)
        assert run_job(running.id) is JobStatus.PROCESSED
        assert [message["args"][0] for message in sent] == [parked[0].id]
        assert as_utc(reload_job(parked[0].id).due_at) <= utcnow()
        assert as_utc(reload_job(parked[1].id).due_at) > utcnow()
        assert run_job(parked[0].id) is JobStatus.PROCESSED
        assert [message["args"][0] for message in sent] == [parked[0].id, parked[1].id]


def test_a_cancel_wakes_a_parked_job_too(
    limited: Callable[..., Flask], sent: list[dict[str, Any]]
) -> None:
    """Any end, a cancel in the web process too, wakes the owner's parked job."""
    app = limited(ASYNC_REQUEST_OWNER_MAX_RUNNING=1)
    with app.app_context():
        running = Job.create_and_enqueue(workers.Echo, 1)
        parked = Job.create_and_enqueue(workers.Echo, 2)
        _set_status(running.id, JobStatus.PROCESSING)
        run_job(parked.id)
        sent.clear()
        cancel_job(running.id)
        assert [message["args"][0] for message in sent] == [parked.id]


def test_the_running_cap_is_per_owner(
    limited: Callable[..., Flask], sent: list[dict[str, Any]]
) -> None:
    """Bob's job runs while alice is at her cap."""
    app = limited(ASYNC_REQUEST_OWNER_MAX_RUNNING=1)
    with app.app_context():
        running = Job.create_and_enqueue(workers.Echo, 1)
        waiting = Job.create_and_enqueue(workers.Echo, 2)
        _identity["owner"] = "bob"
        bobs = Job.create_and_enqueue(workers.Echo, 3)
        _set_status(running.id, JobStatus.PROCESSING)
        assert run_job(bobs.id) is JobStatus.PROCESSED
        assert run_job(waiting.id) is None
        # Alice's second job was held back as it was stored: her first was on its way.
        assert [message["args"][0] for message in sent] == [running.id, bobs.id]


def test_a_job_past_the_cap_is_stored_parked_and_not_sent(
    limited: Callable[..., Flask], sent: list[dict[str, Any]]
) -> None:
    """With alice's cap taken by jobs running or sent, her next job waits in the table."""
    app = limited(ASYNC_REQUEST_OWNER_MAX_RUNNING=2)
    with app.app_context():
        jobs = [Job.create_and_enqueue(workers.Echo, n) for n in range(4)]
        assert [message["args"][0] for message in sent] == [jobs[0].id, jobs[1].id]
        held = reload_job(jobs[2].id)
        assert held.status is JobStatus.WAITING
        assert as_utc(held.due_at) > as_utc(held.created_at)
        assert run_job(jobs[0].id) is JobStatus.PROCESSED
        assert [message["args"][0] for message in sent][2:] == [jobs[2].id]


def test_a_held_job_is_sent_if_room_was_made_as_it_was_stored(
    limited: Callable[..., Flask], sent: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job held back while the owner's last job ended is sent: its own wake finds the room."""
    app = limited(ASYNC_REQUEST_OWNER_MAX_RUNNING=1)
    with app.app_context():
        first = Job.create_and_enqueue(workers.Echo, 1)
        from flask_async_request import limits

        real = limits.held_back

        def held_then_ended(*args: Any) -> bool:
            # The owner's job ends (with no parked job to wake) right after the check.
            held = real(*args)
            current_db().session.get(Job, first.id).status = JobStatus.CANCELLED  # type: ignore[union-attr]
            current_db().session.get(Job, first.id).finished_at = utcnow()  # type: ignore[union-attr]
            current_db().session.commit()
            return held

        monkeypatch.setattr(limits, "held_back", held_then_ended)
        second = Job.create_and_enqueue(workers.Echo, 2)
        assert [message["args"][0] for message in sent] == [first.id, second.id]
        assert as_utc(reload_job(second.id).due_at) <= utcnow()


def test_a_message_for_a_finished_job_neither_runs_nor_parks(
    limited: Callable[..., Flask], sent: list[dict[str, Any]]
) -> None:
    """A duplicate message of a job that already ran changes nothing."""
    app = limited(ASYNC_REQUEST_OWNER_MAX_RUNNING=1)
    with app.app_context():
        job = Job.create_and_enqueue(workers.Echo, 1)
        assert run_job(job.id) is JobStatus.PROCESSED
        finished_at = reload_job(job.id).due_at
        assert run_job(job.id) is None
        assert reload_job(job.id).due_at == finished_at


def test_eager_jobs_run_under_the_running_cap(limited: Callable[..., Flask]) -> None:
    """Jobs run one after another, each under the cap, all processed."""
    app = limited(ASYNC_REQUEST_OWNER_MAX_RUNNING=1)
    with app.app_context():
        jobs = [Job.create_and_enqueue(workers.Echo, n) for n in range(3)]
        assert [job.status for job in jobs] == [JobStatus.PROCESSED] * 3
