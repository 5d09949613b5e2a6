"""maintenance: the sweeper, retry_job, whether messages reach a worker, and what it exports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, cast

import kombu.exceptions
import pytest
import redis
from flask import Flask

from flask_async_request import (
    BrokerUnavailable,
    EnqueueError,
    Job,
    JobStatus,
    maintenance,
    reading,
    retention,
)
from flask_async_request.broker import PROCESS_TASK
from flask_async_request.exceptions import JobNotFailed, JobNotFound
from flask_async_request.maintenance import (
    SweepResult,
    consumers,
    job_stats,
    list_jobs,
    retry_job,
    sends_messages,
    sweep_jobs,
    unconsumed_queues,
)
from flask_async_request.signals import jobs_swept
from flask_async_request.values import utcnow
from tests.conftest import AppFactory, add_job, current_db, reload_job


@pytest.fixture
def sent(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, dict[str, Any]]]:
    """Record the messages published, instead of running them."""
    messages: list[tuple[int, dict[str, Any]]] = []
    task = app.extensions["celery"].tasks[PROCESS_TASK]
    monkeypatch.setattr(
        task, "apply_async", lambda args, **options: messages.append((args[0], options))
    )
    return messages


@pytest.fixture
def embedded(make_app: AppFactory) -> Iterator[Flask]:
    """An app in embedded mode whose embedded worker has not started: its messages reach no one."""
    app = make_app(CELERY={})
    with app.app_context():
        yield app


def _commit() -> None:
    current_db().session.commit()


def _processing(lease_from_now: float, attempts: int = 1) -> int:
    """A processing job whose lease ends ``lease_from_now`` seconds from now."""
    job = add_job(status=JobStatus.PROCESSING)
    job.attempts = attempts
    job.lease_expires_at = utcnow() + timedelta(seconds=lease_from_now)
    _commit()
    return job.id


def _stale(minutes: float = 10) -> int:
    """A waiting job due ``minutes`` ago: past the default waiting timeout."""
    job = add_job()
    job.due_at = utcnow() - timedelta(minutes=minutes)
    _commit()
    return job.id


# sweep_jobs: lost workers -----------------------------------------------------------------


def test_lost_worker_without_retries_fails_the_job(app: Flask, sent: list[Any]) -> None:
    """An expired lease with no retry left fails the job, saying the worker was lost."""
    job_id = _processing(-5)
    assert sweep_jobs().failed == 1
    job = reload_job(job_id)
    assert job.status is JobStatus.FAILED
    assert job.status_code == 500
    assert job.response is not None
    error = json.loads(job.response)["error"]
    assert "The worker running this job was lost: its lease expired at" in error
    assert sent == []


def test_lost_worker_with_retries_runs_again(make_app: AppFactory) -> None:
    """An expired lease with retries left puts the job back and it runs."""
    app = make_app(ASYNC_REQUEST_RETRY=1)
    with app.app_context():
        job_id = _processing(-5)
        assert sweep_jobs().requeued == 1
        job = reload_job(job_id)
        assert job.status is JobStatus.PROCESSED
        assert job.attempts == 2


@pytest.mark.parametrize(("attempts", "requeued"), [(1, 1), (2, 1), (3, 0)])
def test_a_lost_job_runs_again_while_its_attempts_allow(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, attempts: int, requeued: int
) -> None:
    """With ASYNC_REQUEST_RETRY=2 a job lost at attempt 1 or 2 runs again; at attempt 3 it fails."""
    app = make_app(ASYNC_REQUEST_RETRY=2)
    task = app.extensions["celery"].tasks[PROCESS_TASK]
    monkeypatch.setattr(task, "apply_async", lambda args, **options: None)
    with app.app_context():
        job_id = _processing(-5, attempts=attempts)
        result = sweep_jobs()
        assert (result.requeued, result.failed) == (requeued, 1 - requeued)
        expected = JobStatus.WAITING if requeued else JobStatus.FAILED
        assert reload_job(job_id).status is expected


def test_live_lease_is_left_alone(app: Flask, sent: list[Any]) -> None:
    """A processing job whose lease is current is not touched."""
    job_id = _processing(30)
    assert sweep_jobs() == SweepResult(0, 0, 0)
    assert reload_job(job_id).status is JobStatus.PROCESSING
    assert sent == []


def test_lost_jobs_are_looked_at_a_batch_at_a_time(app: Flask, sent: list[Any]) -> None:
    """One sweep handles batch_size lost jobs; the next sweep the rest."""
    for _ in range(3):
        _processing(-5)
    assert sweep_jobs(batch_size=2).failed == 2
    assert sweep_jobs(batch_size=2).failed == 1
    assert sweep_jobs(batch_size=2).failed == 0


def test_a_requeued_job_whose_message_cannot_be_sent_stays_waiting(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The broker refusing the message is logged; the job waits for the next sweep, counted."""
    app = make_app(ASYNC_REQUEST_RETRY=1)

    def refuse(message: Any, **options: Any) -> None:
        raise EnqueueError("broker down", message.job_id)

    monkeypatch.setattr(maintenance, "publish", refuse)
    with app.app_context():
        job_id = _processing(-5)
        assert sweep_jobs().requeued == 1
        assert reload_job(job_id).status is JobStatus.WAITING
    assert f"Job {job_id} could not be published; the next sweep retries." in caplog.text


# sweep_jobs: waiting jobs whose message was lost ----------------------------------------------


def test_unclaimed_waiting_job_is_sent_again(app: Flask, sent: list[Any]) -> None:
    """A waiting job due longer ago than the timeout is published again, once per timeout."""
    stale = _stale()
    fresh = add_job()
    assert sweep_jobs().republished == 1
    assert [message[0] for message in sent] == [stale]
    assert sweep_jobs().republished == 0
    assert reload_job(fresh.id).status is JobStatus.WAITING


def test_the_waiting_timeout_decides_what_is_stale(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_WAITING_TIMEOUT: a job due for less is left to the workers."""
    app = make_app(ASYNC_REQUEST_WAITING_TIMEOUT=3600)
    sent: list[int] = []
    task = app.extensions["celery"].tasks[PROCESS_TASK]
    task.apply_async = lambda args, **options: sent.append(args[0])
    with app.app_context():
        _stale(minutes=30)
        old = _stale(minutes=90)
        assert sweep_jobs().republished == 1
    assert sent == [old]


def test_a_broker_down_stops_the_sweep_at_the_first_refusal(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The rest would fail the same way: one try, none counted, all left to the next sweep."""
    tries: list[int] = []

    def refuse(message: Any, **options: Any) -> None:
        tries.append(message.job_id)
        raise EnqueueError("broker down", message.job_id)

    monkeypatch.setattr(maintenance, "publish", refuse)
    ids = [_stale(), _stale(), _stale()]
    assert sweep_jobs().republished == 0
    assert tries == ids[:1]
    assert "could not be published; the next sweep retries" in caplog.text
    monkeypatch.undo()
    sent: list[int] = []
    task = app.extensions["celery"].tasks[PROCESS_TASK]
    monkeypatch.setattr(task, "apply_async", lambda args, **options: sent.append(args[0]))
    assert sweep_jobs().republished == 3
    assert sent == ids


def test_sweeping_all_waiting_jobs_sends_every_one_page_by_page(
    app: Flask, sent: list[Any]
) -> None:
    """sweep_jobs(all_waiting=True) sends every waiting job, past one batch, each once."""
    ids = [add_job().id for _ in range(5)]
    assert sweep_jobs(batch_size=2, all_waiting=True).republished == 5
    assert [message[0] for message in sent] == ids


def test_sweeping_all_waiting_jobs_keeps_a_retry_backoff(app: Flask, sent: list[Any]) -> None:
    """sweep_jobs(all_waiting=True) sends a job due later with the countdown left to it."""
    job = add_job()
    job.due_at = utcnow() + timedelta(seconds=30)
    _commit()
    assert sweep_jobs(all_waiting=True).republished == 1
    ((_, options),) = sent
    assert 25 < options["countdown"] <= 30


def test_sweeping_all_waiting_jobs_leaves_the_others_alone(app: Flask, sent: list[Any]) -> None:
    """Only waiting jobs are sent: not processing or finished ones."""
    waiting = add_job().id
    add_job(status=JobStatus.PROCESSED, finished_at=utcnow())
    _processing(30)
    assert sweep_jobs(all_waiting=True).republished == 1
    assert [message[0] for message in sent] == [waiting]


def test_a_sweep_is_announced_with_its_counts(make_app: AppFactory) -> None:
    """jobs_swept carries what the sweep did, from the sweeping app."""
    app = make_app(ASYNC_REQUEST_RETRY=1)
    seen: list[tuple[Flask, dict[str, Any]]] = []

    def record(sender: Flask, **counts: Any) -> None:
        seen.append((sender, counts))

    task = app.extensions["celery"].tasks[PROCESS_TASK]
    task.apply_async = lambda args, **options: None
    with app.app_context(), jobs_swept.connected_to(record):
        _processing(-5)
        _stale()
        sweep_jobs()
    assert seen == [(app, {"republished": 1, "requeued": 1, "failed": 0})]


# Where messages reach no worker: embedded mode before its worker starts ------------------------


def test_messages_are_sent_by_eager_and_broker_apps(app: Flask) -> None:
    """With no embedded worker, every message reaches a worker."""
    assert sends_messages() is True


def test_an_embedded_app_whose_worker_does_not_run_sends_nothing(embedded: Flask) -> None:
    """A process whose embedded worker has not started has no one to send to."""
    assert sends_messages() is False


def test_a_sweep_that_cannot_send_changes_rows_only(make_app: AppFactory) -> None:
    """Lost jobs are put back and stale ones left for the embedded worker; result.sent is False."""
    app = make_app(CELERY={}, ASYNC_REQUEST_RETRY=1)
    with app.app_context():
        lost = _processing(-5)
        stale = _stale()
        before = reload_job(stale).due_at
        assert sweep_jobs() == SweepResult(republished=0, requeued=1, failed=0, sent=False)
        assert reload_job(lost).status is JobStatus.WAITING
        assert reload_job(stale).due_at == before
        assert sends_messages() is False


def test_retry_in_a_process_that_cannot_send_puts_the_job_back_only(embedded: Flask) -> None:
    """retry_job answers False, and the job waits in the table for the embedded worker."""
    job_id = add_job(status=JobStatus.FAILED, status_code=500, response="{}").id
    assert retry_job(job_id) is False
    assert reload_job(job_id).status is JobStatus.WAITING


# retry_job ----------------------------------------------------------------------------------


def test_retry_clears_progress_and_content_type(app: Flask, sent: list[Any]) -> None:
    """A retried job starts afresh: no old reply, progress, message or content type."""
    job = add_job(status=JobStatus.FAILED, status_code=500, response='{"error": "x"}')
    job.progress, job.progress_message, job.content_type = 0.5, "half way", "text/csv"
    job.attempts, job.finished_at = 3, utcnow()
    _commit()
    assert retry_job(job.id) is True
    job = reload_job(job.id)
    assert [message[0] for message in sent] == [job.id]
    assert job.status is JobStatus.WAITING
    assert (job.progress, job.progress_message, job.content_type) == (None, None, None)
    assert (job.status_code, job.response, job.finished_at, job.attempts) == (None, None, None, 0)


def test_a_retried_job_runs_again(app: Flask) -> None:
    """With a worker to send to, the retried job runs to its new end."""
    job_id = add_job(
        "tests.workers:Echo", JobStatus.FAILED, args=["again"], status_code=500, response="{}"
    ).id
    assert retry_job(job_id) is True
    job = reload_job(job_id)
    assert job.status is JobStatus.PROCESSED
    assert json.loads(job.response or "")["args"] == ["again"]


def test_retry_errors_narrow(app: Flask) -> None:
    """Retrying a missing job is JobNotFound; one that has not failed is JobNotFailed."""
    with pytest.raises(JobNotFound):
        retry_job(999)
    with pytest.raises(JobNotFailed, match="only failed jobs can be retried"):
        retry_job(add_job().id)


@pytest.mark.parametrize("status", [JobStatus.PROCESSED, JobStatus.CANCELLED, JobStatus.PROCESSING])
def test_only_failed_jobs_are_retried(app: Flask, sent: list[Any], status: JobStatus) -> None:
    """A job in any other status is left as it is, and no message goes out."""
    job_id = add_job(status=status, response="kept").id
    with pytest.raises(JobNotFailed) as info:
        retry_job(job_id)
    assert info.value.status == status.value
    assert (reload_job(job_id).status, reload_job(job_id).response) == (status, "kept")
    assert sent == []


def test_retry_raises_when_the_broker_refuses(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """EnqueueError reaches the caller; the job is waiting, for the sweeper to send."""

    def refuse(message: Any, **options: Any) -> None:
        raise EnqueueError("broker down", message.job_id)

    monkeypatch.setattr(maintenance, "publish", refuse)
    job_id = add_job(status=JobStatus.FAILED, response="{}").id
    with pytest.raises(EnqueueError):
        retry_job(job_id)
    assert reload_job(job_id).status is JobStatus.WAITING


# unconsumed_queues ----------------------------------------------------------------------------


def test_no_queue_is_unconsumed_where_jobs_run_in_process(app: Flask, embedded: Flask) -> None:
    """Eager and embedded apps serve every job themselves: no queue is listed."""
    assert unconsumed_queues({None: 3, "slow": 1}) == []
    with app.app_context():
        assert unconsumed_queues({None: 3, "slow": 1}) == []


@pytest.fixture
def brokered(make_app: AppFactory) -> Iterator[Flask]:
    """An app with a broker named (never reached: the tests answer for the workers)."""
    app = make_app(CELERY={"broker_url": "redis://127.0.0.1:1/0"})
    with app.app_context():
        yield app


def _workers_answer(
    app: Flask, monkeypatch: pytest.MonkeyPatch, answer: dict[str, Any] | None
) -> list[float]:
    """Have Celery's inspect answer ``answer`` for active_queues; the timeouts asked."""
    timeouts: list[float] = []

    class Inspect:
        def active_queues(self) -> dict[str, Any] | None:
            return answer

    def inspect(timeout: float = 1.0, **kwargs: Any) -> Inspect:
        timeouts.append(timeout)
        return Inspect()

    monkeypatch.setattr(app.extensions["celery"].control, "inspect", inspect)
    return timeouts


def test_queues_no_running_worker_consumes_are_listed(
    brokered: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Waiting jobs' queues minus those the workers consume; None is the default queue."""
    timeouts = _workers_answer(
        brokered, monkeypatch, {"w1@host": [{"name": "celery"}], "w2@host": [{"name": "fast"}]}
    )
    waiting: dict[str | None, int] = {None: 2, "fast": 1, "slow": 4, "zeta": 1, "empty": 0}
    assert unconsumed_queues(waiting, timeout=0.5) == ["slow", "zeta"]
    assert timeouts == [0.5]


def test_with_no_worker_answering_every_waiting_queue_is_listed(
    brokered: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No answer within the timeout: each queue that has waiting jobs, by name."""
    _workers_answer(brokered, monkeypatch, None)
    assert unconsumed_queues({None: 1, "slow": 2, "empty": 0}) == ["celery", "slow"]


def test_no_waiting_job_asks_no_worker(brokered: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """With nothing waiting, the workers are not asked at all."""
    timeouts = _workers_answer(brokered, monkeypatch, {})
    assert unconsumed_queues({None: 0, "slow": 0}) == []
    assert timeouts == []


def test_a_connection_the_broker_closed_is_tried_once_again(
    brokered: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pooled connection cut by a broker restart fails once; the next inspect answers."""
    answers: list[Any] = [
        redis.ConnectionError("Connection closed by server."),
        {"w1@host": [{"name": "celery"}]},
    ]

    class Inspect:
        def active_queues(self) -> dict[str, Any] | None:
            answer = answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            return cast("dict[str, Any]", answer)

    monkeypatch.setattr(brokered.extensions["celery"].control, "inspect", lambda **_: Inspect())
    assert consumers(timeout=0.1) == {"w1@host": ["celery"]}
    assert answers == []


def test_a_broker_out_of_reach_is_a_typed_error(brokered: Flask) -> None:
    """Nothing listens at the broker's address: BrokerUnavailable, the driver's error its cause."""
    with pytest.raises(BrokerUnavailable, match="could not be reached") as raised:
        consumers(timeout=0.1)
    assert isinstance(raised.value.__cause__, kombu.exceptions.OperationalError)


# The read side, importable from here ------------------------------------------------------------


def test_the_read_side_and_the_purge_are_importable_from_here() -> None:
    """list_jobs, job_stats and the purge are the very functions of reading and retention."""
    assert maintenance.list_jobs is reading.list_jobs
    assert maintenance.job_stats is reading.job_stats
    assert maintenance.purge_jobs is retention.purge_jobs
    assert maintenance.purge_expired is retention.purge_expired
    assert set(maintenance.__all__) <= set(dir(maintenance))


def test_job_stats_counts_per_status_age_and_queue(app: Flask) -> None:
    """Each status counted (0 too), the oldest waiting age, recent ends, waiting per queue."""
    now = utcnow()
    old = add_job()
    old.created_at = now - timedelta(hours=2)
    slow = add_job()
    slow.queue = "slow"
    add_job(status=JobStatus.PROCESSED, finished_at=now - timedelta(minutes=5))
    add_job(status=JobStatus.FAILED, finished_at=now - timedelta(hours=3))
    _commit()
    stats = job_stats()
    assert stats.counts == {
        JobStatus.WAITING: 2,
        JobStatus.PROCESSING: 0,
        JobStatus.PROCESSED: 1,
        JobStatus.FAILED: 1,
        JobStatus.CANCELLED: 0,
    }
    assert stats.oldest_waiting_age is not None
    assert timedelta(hours=2) <= stats.oldest_waiting_age < timedelta(hours=3)
    assert stats.finished_last_hour == 1
    assert stats.waiting_by_queue == {None: 1, "slow": 1}


def test_job_stats_of_no_jobs(app: Flask) -> None:
    """An empty table: zero everywhere and no oldest age."""
    stats = job_stats()
    assert set(stats.counts.values()) == {0}
    assert (stats.oldest_waiting_age, stats.finished_last_hour, stats.waiting_by_queue) == (
        None,
        0,
        {},
    )


def test_list_jobs_newest_first_by_status(app: Flask) -> None:
    """list_jobs filters by status and gives the newest first, up to the limit."""
    ids = [add_job(status=JobStatus.FAILED, finished_at=utcnow()).id for _ in range(3)]
    add_job()
    assert [job.id for job in list_jobs([JobStatus.FAILED])] == ids[::-1]
    assert [job.id for job in list_jobs([JobStatus.FAILED], limit=2)] == ids[:0:-1]
    assert all(isinstance(job, Job) for job in list_jobs())
