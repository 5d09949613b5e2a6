"""The Celery app made from Flask config, and the messages sent through it."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy

from flask_async_request import AsyncRequest, EnqueueError
from flask_async_request.broker import (
    CALLBACK_TASK,
    PROCESS_TASK,
    Message,
    hard_time_limit,
    make_celery,
    publish,
    queue_callback,
    revoke,
    task_id,
)
from flask_async_request.exceptions import ConfigurationError
from flask_async_request.testing import JobRunner
from tests.conftest import INTERNALS, SECRET, AppFactory

Sent = list[tuple[tuple[Any, ...], dict[str, Any]]]


def spy(
    monkeypatch: pytest.MonkeyPatch, app: Flask, task: str, error: Exception | None = None
) -> Sent:
    """Record each apply_async of ``task`` on the app's Celery app (or raise ``error``)."""
    sent: Sent = []

    def apply_async(args: tuple[Any, ...], **options: Any) -> None:
        if error is not None:
            raise error
        sent.append((args, options))

    monkeypatch.setattr(app.extensions["celery"].tasks[task], "apply_async", apply_async)
    return sent


@pytest.fixture
def broker_app(make_app: AppFactory) -> Iterator[Flask]:
    """An app with a broker named (in memory) and no eager Celery, in an app context."""
    app = make_app(CELERY={"broker_url": "memory://localhost/"}, ASYNC_REQUEST_QUEUE="jobs")
    with app.app_context():
        yield app


# make_celery ----------------------------------------------------------------------------


def _flask_app(**celery: Any) -> Flask:
    app = Flask(__name__)
    app.config["CELERY"] = celery
    return app


def test_celery_must_be_a_mapping() -> None:
    """CELERY that is not a dict is a ConfigurationError naming the key and what it got."""
    app = Flask(__name__)
    app.config["CELERY"] = "redis://127.0.0.1:6379/0"
    with pytest.raises(
        ConfigurationError, match=re.escape("CELERY is 'redis://127.0.0.1:6379/0'; expected a dict")
    ):
        make_celery(app)


def test_a_celery_app_in_the_extensions_is_reused() -> None:
    """An app.extensions['celery'] already there is returned as it is, with no embedded worker."""
    app = _flask_app()
    mine = Celery("mine", set_as_current=False)
    app.extensions["celery"] = mine
    assert make_celery(app, "jobs") == (mine, None)
    assert mine.conf.task_default_queue != "jobs"


def test_the_made_app_is_stored_and_takes_the_settings() -> None:
    """The made Celery app is app.extensions['celery'], configured from CELERY."""
    app = _flask_app(broker_url="memory://localhost/", task_acks_late=True)
    made, embedded = make_celery(app)
    assert app.extensions["celery"] is made
    assert made.conf.task_acks_late is True
    assert embedded is None


def test_without_a_broker_jobs_run_embedded_on_a_queue_of_the_app_s_own() -> None:
    """No broker_url: the in-memory transport, an embedded worker and a queue per app."""
    first, first_embedded = make_celery(_flask_app(), "jobs")
    second, _ = make_celery(_flask_app())
    assert first_embedded is not None
    assert first.conf.broker_url == "memory://localhost/"
    assert first.conf.task_default_queue.startswith("async-request-embedded-")
    assert first.conf.task_default_queue != second.conf.task_default_queue


def test_eager_celery_has_no_embedded_worker() -> None:
    """task_always_eager without a broker runs in the caller: no embedded worker."""
    _, embedded = make_celery(_flask_app(task_always_eager=True))
    assert embedded is None


def test_the_jobs_queue_is_the_default_queue_unless_celery_names_one() -> None:
    """ASYNC_REQUEST_QUEUE becomes task_default_queue; CELERY's own task_default_queue wins."""
    made, _ = make_celery(_flask_app(broker_url="memory://localhost/"), "jobs")
    assert made.conf.task_default_queue == "jobs"
    named, _ = make_celery(
        _flask_app(broker_url="memory://localhost/", task_default_queue="mine"), "jobs"
    )
    assert named.conf.task_default_queue == "mine"


def test_tasks_run_inside_the_flask_app_s_context() -> None:
    """A task of the made Celery app runs with its Flask app as current_app."""
    app = _flask_app(task_always_eager=True)
    made, _ = make_celery(app)

    @made.task(name="test.which_app")  # type: ignore[untyped-decorator]
    def which_app() -> str:
        return str(current_app.import_name)

    assert which_app.apply().get() == app.import_name


def test_broker_configured_means_no_embedded_worker(make_app: AppFactory) -> None:
    """Naming a broker turns embedded mode off."""
    app = make_app(CELERY={"broker_url": "redis://127.0.0.1:6379/15"})
    assert app.extensions["async_request"].embedded is None
    assert app.extensions["celery"].conf.broker_url == "redis://127.0.0.1:6379/15"


@pytest.mark.parametrize(
    ("celery", "bound"),
    [
        ({"broker_url": "redis://127.0.0.1:6379/15"}, 4.0),
        ({"broker_url": "rediss://127.0.0.1:6380/0", "broker_connection_timeout": 2}, 2.0),
        ({"broker_url": "redis://h", "broker_transport_options": {"visibility_timeout": 9}}, 4.0),
        ({"broker_url": "redis://h", "broker_connection_timeout": None}, None),
        (
            {
                "broker_url": "redis://h",
                "broker_transport_options": {"socket_connect_timeout": 9},
            },
            9,
        ),
        ({"broker_url": "amqp://guest:guest@127.0.0.1:5672//"}, None),
        ({}, None),
        # The redis client connects within socket_timeout when it is the only one.
        ({"broker_url": "redis://h", "broker_transport_options": {"socket_timeout": 9}}, None),
    ],
    ids=["redis", "rediss", "other options", "no timeout", "named", "amqp", "embedded", "read"],
)
def test_a_redis_broker_s_connects_give_up_after_the_connection_timeout(
    make_app: AppFactory, celery: dict[str, Any], bound: float | None
) -> None:
    """Celery's Redis transport would wait out the kernel's SYN retries (over two minutes)."""
    conf = make_app(CELERY={"task_always_eager": False, **celery}).extensions["celery"].conf
    options = conf.broker_transport_options or {}
    assert options.get("socket_connect_timeout") == bound
    assert options.get("visibility_timeout") == celery.get("broker_transport_options", {}).get(
        "visibility_timeout"
    )


def test_a_celery_app_of_the_user_s_keeps_its_transport_options(tmp_path: Path) -> None:
    """A Celery app the user put in app.extensions is not given a connect timeout."""
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=SECRET,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/bare.db",
        CELERY={"task_always_eager": True},
    )
    SQLAlchemy(app)
    mine = Celery("mine", broker="redis://127.0.0.1:6379/15")
    app.extensions["celery"] = mine
    AsyncRequest(app)
    assert "socket_connect_timeout" not in (mine.conf.broker_transport_options or {})


# Ids, limits, messages ------------------------------------------------------------------


def test_task_id_names_the_job_and_its_uid() -> None:
    """Every message of a job has one task id, made of its id and uid."""
    assert task_id(42, "abc") == "async-request-42-abc"
    assert task_id(42, "abc") != task_id(42, "abd")


@pytest.mark.parametrize(
    ("limit", "hard"), [(1, 6.0), (2, 7.0), (50, 55.0), (100, 110.0), (600, 660.0)]
)
def test_hard_time_limit_comes_later_than_the_job_s(limit: float, hard: float) -> None:
    """The process is replaced 5 s or a tenth of the limit after it, whichever is longer."""
    assert hard_time_limit(limit) == hard


def test_a_message_s_queue_limit_and_worker_default_to_none() -> None:
    """A Message needs the job's id and uid only."""
    assert Message(1, "u") == (1, "u", None, None, None)


# publish --------------------------------------------------------------------------------


def test_publish_sends_the_job_s_task(broker_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """publish sends process_job(job_id) with the job's task id, queue and hard time limit."""
    sent = spy(monkeypatch, broker_app, PROCESS_TASK)
    publish(Message(7, "uid", queue="reports", time_limit=10))
    assert sent == [
        (
            (7,),
            {
                "countdown": None,
                "task_id": "async-request-7-uid",
                "queue": "reports",
                "time_limit": hard_time_limit(10),
            },
        )
    ]


def test_publish_without_a_queue_uses_the_jobs_queue(
    broker_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A message with no queue of its own goes to ASYNC_REQUEST_QUEUE, after its countdown."""
    sent = spy(monkeypatch, broker_app, PROCESS_TASK)
    publish(Message(7, "uid"), countdown=4.0)
    ((args, options),) = sent
    assert args == (7,)
    assert (options["queue"], options["countdown"]) == ("jobs", 4.0)
    assert "time_limit" not in options


def test_a_broker_that_refuses_is_an_enqueue_error(
    broker_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A publish that fails raises EnqueueError holding the job's id, its cause chained."""
    refused = ConnectionRefusedError("no broker")
    spy(monkeypatch, broker_app, PROCESS_TASK, error=refused)
    with pytest.raises(EnqueueError, match="Job 9 is stored but its message could not") as info:
        publish(Message(9, "uid"))
    assert info.value.job_id == 9
    assert info.value.__cause__ is refused


def test_an_eager_publish_lets_the_job_s_error_through(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With eager Celery, an error raised while running the job is not taken for a broker's."""
    spy(monkeypatch, app, PROCESS_TASK, error=KeyError("inside the job"))
    with pytest.raises(KeyError):
        publish(Message(9, "uid"))


def test_a_bound_runner_keeps_the_message(
    broker_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a JobRunner bound, publish hands it the job and sends nothing."""
    sent = spy(monkeypatch, broker_app, PROCESS_TASK)
    with JobRunner(broker_app) as runner:
        publish(Message(3, "uid"), countdown=60)
        assert runner.pending == [3]
    assert sent == []


# Callbacks and revokes ----------------------------------------------------------------


def test_queue_callback_sends_the_callback_task(
    broker_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A callback goes to the jobs queue, with a task id of its own per job."""
    sent = spy(monkeypatch, broker_app, CALLBACK_TASK)
    queue_callback(5)
    assert sent == [((5,), {"queue": "jobs", "task_id": "async-request-callback-5"})]


def test_a_callback_the_broker_refuses_is_logged(
    broker_app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """queue_callback logs a refused message instead of raising: the job has ended either way."""
    spy(monkeypatch, broker_app, CALLBACK_TASK, error=ConnectionRefusedError("down"))
    with caplog.at_level(logging.ERROR, logger="flask_async_request"):
        queue_callback(5)
    assert "Job 5: its callback could not be queued." in caplog.text


def test_a_bound_runner_keeps_the_callback(
    broker_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a JobRunner bound, the callback is kept for the test to deliver."""
    sent = spy(monkeypatch, broker_app, CALLBACK_TASK)
    with JobRunner(broker_app) as runner:
        queue_callback(5)
        assert runner.callbacks == [5]
    assert sent == []


def test_revoke_names_the_job_s_task(broker_app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """revoke asks the workers to drop the job's task id."""
    revoked: list[str] = []
    monkeypatch.setattr(broker_app.extensions["celery"].control, "revoke", revoked.append)
    revoke(INTERNALS.state(current_app), 4, "uid")
    assert revoked == ["async-request-4-uid"]


def test_revoke_is_skipped_when_eager(app: Flask, monkeypatch: pytest.MonkeyPatch) -> None:
    """With eager Celery there is no worker to tell."""
    revoked: list[str] = []
    monkeypatch.setattr(app.extensions["celery"].control, "revoke", revoked.append)
    revoke(INTERNALS.state(current_app), 4, "uid")
    assert revoked == []


def test_a_revoke_that_fails_is_logged(
    broker_app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A revoke the broker refuses is a warning, not an error: the row's cancel is what counts."""

    def refused(task: str) -> None:
        raise ConnectionRefusedError("down")

    monkeypatch.setattr(broker_app.extensions["celery"].control, "revoke", refused)
    with caplog.at_level(logging.WARNING, logger="flask_async_request"):
        revoke(INTERNALS.state(current_app), 4, "uid")
    assert "Job 4: could not revoke its Celery task." in caplog.text
