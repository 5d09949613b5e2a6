"""When a job's message is pushed straight to Redis, and when apply_async sends it.

Pushing needs a Redis broker: those tests are in tests/integration/test_publisher.py.
These decide without connecting to one.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery
from celery.signals import after_task_publish, before_task_publish

from flask_async_request.publisher import connect_timeout, publish_retry_policy, sender_for

REDIS_URL = "redis://127.0.0.1:6379/11"


def _celery(**conf: Any) -> Celery:
    app = Celery("publisher-unit", set_as_current=False)
    app.conf.update(conf)
    return app


@pytest.fixture
def no_publish_receivers(monkeypatch: pytest.MonkeyPatch) -> None:
    """No receivers of Celery's publish signals, which other tests may have left connected."""
    monkeypatch.setattr(before_task_publish, "receivers", [])
    monkeypatch.setattr(after_task_publish, "receivers", [])


@pytest.fixture
def unconnectable(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Celery]]:
    """Fail the test if a sender would be made: these decisions need no broker."""
    import flask_async_request.publisher as publisher

    made: list[Celery] = []

    def refuse(celery_app: Celery) -> None:
        made.append(celery_app)
        raise AssertionError("a sender was made")

    monkeypatch.setattr(publisher, "RedisSender", refuse)
    yield made


# The retry policy and the timeouts -------------------------------------------------------


def test_the_default_retry_policy_is_celery_s() -> None:
    """Celery's default policy: 3 retries, 0, 0.2, 0.4 s apart, as apply_async would."""
    assert publish_retry_policy(_celery()) == {
        "max_retries": 3,
        "interval_start": 0,
        "interval_step": 0.2,
        "interval_max": 1,
    }


def test_the_retry_policy_keeps_only_what_kombu_takes() -> None:
    """task_publish_retry_policy's retry keys are passed on; anything else is dropped."""
    policy = {"max_retries": 5, "interval_start": 0, "interval_step": 0.5, "retry_errors": None}
    assert publish_retry_policy(_celery(task_publish_retry_policy=policy)) == {
        "max_retries": 5,
        "interval_start": 0,
        "interval_step": 0.5,
    }


def test_with_publish_retries_off_one_retry_is_made_at_once() -> None:
    """task_publish_retry=False still retries once, at once, for a connection cut while idle."""
    app = _celery(task_publish_retry=False, task_publish_retry_policy={"max_retries": 9})
    assert publish_retry_policy(app) == {"max_retries": 1, "interval_start": 0}


@pytest.mark.parametrize(
    ("conf", "timeout"),
    [
        ({}, 4.0),
        ({"broker_connection_timeout": 2}, 2.0),
        ({"broker_connection_timeout": None}, None),
        ({"broker_transport_options": {"socket_connect_timeout": 9}}, None),
        ({"broker_transport_options": {"socket_timeout": 9}}, None),
        ({"broker_transport_options": {"visibility_timeout": 9}}, 4.0),
    ],
)
def test_connect_timeout(conf: dict[str, Any], timeout: float | None) -> None:
    """broker_connection_timeout, unless the transport options name a timeout of their own."""
    assert connect_timeout(_celery(**conf)) == timeout


# Falling back to apply_async -------------------------------------------------------------


@pytest.mark.parametrize(
    "conf",
    [
        {"broker_url": "memory://localhost/"},
        {"broker_url": "amqp://guest:guest@127.0.0.1:5672//"},
        {"broker_url": REDIS_URL, "task_serializer": "pickle", "accept_content": ["pickle"]},
        {"broker_url": REDIS_URL, "accept_content": ["pickle"]},
        {"broker_url": REDIS_URL, "task_compression": "gzip"},
        {"broker_url": REDIS_URL, "task_protocol": 1},
        {"broker_url": REDIS_URL, "task_routes": {"x": {"queue": "elsewhere"}}},
        {"broker_url": REDIS_URL, "task_default_priority": 5},
        {"broker_url": REDIS_URL, "task_send_sent_event": True},
        {"broker_url": REDIS_URL, "task_always_eager": True},
    ],
    ids=[
        "memory",
        "amqp",
        "pickle",
        "accepts no json",
        "compression",
        "protocol 1",
        "routes",
        "priority",
        "sent events",
        "eager",
    ],
)
def test_other_transports_and_message_shapes_use_apply_async(
    conf: dict[str, Any], no_publish_receivers: None, unconnectable: list[Celery]
) -> None:
    """No sender, and no connection, for anything apply_async would send otherwise."""
    assert sender_for(_celery(**conf), "jobs") is None
    assert unconnectable == []


def test_publish_signal_receivers_get_every_message(unconnectable: list[Celery]) -> None:
    """With a receiver of before_task_publish or after_task_publish, apply_async sends."""

    def receiver(**_: Any) -> None: ...

    app = _celery(broker_url=REDIS_URL)
    for signal in (before_task_publish, after_task_publish):
        signal.connect(receiver)
        try:
            assert sender_for(app, "jobs") is None
        finally:
            signal.disconnect(receiver)
    assert unconnectable == []


def test_the_decision_is_made_once_per_app(
    no_publish_receivers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An app found not plain is not looked at again in the same process."""
    import flask_async_request.publisher as publisher

    looked: list[Celery] = []
    real = publisher._plain

    def plain(celery_app: Celery) -> bool:
        looked.append(celery_app)
        return real(celery_app)

    monkeypatch.setattr(publisher, "_plain", plain)
    app = _celery(broker_url="memory://localhost/")
    assert sender_for(app, "jobs") is None
    assert sender_for(app, "other") is None
    assert looked == [app]
