"""The messages that run jobs, pushed straight to Redis: the same as Celery's own."""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from celery import Celery
from celery.signals import before_task_publish
from kombu import Exchange, Queue

from flask_async_request.broker import PROCESS_TASK
from flask_async_request.publisher import RedisSender, sender_for

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("FAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _celery(**conf: Any) -> Celery:
    app = Celery("publisher-test", broker=REDIS_URL, set_as_current=False)
    app.conf.update(conf)

    @app.task(name=PROCESS_TASK, shared=False, ignore_result=True)  # type: ignore[untyped-decorator]
    def process_job(job_id: int) -> None: ...

    return app


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"far-test-publisher-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(REDIS_URL).delete(name)


def _pop(queue: str) -> dict[str, Any]:
    raw = redis.Redis.from_url(REDIS_URL).rpop(queue)
    assert raw is not None, f"nothing on {queue}"
    message: dict[str, Any] = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    # Ids of the message itself, and of the process that sent it.
    for key in ("delivery_tag", "reply_to"):
        message["properties"].pop(key)
    message["headers"].pop("origin")
    return message


@pytest.mark.parametrize("time_limit", [None, 35.0])
def test_a_pushed_message_is_the_one_apply_async_sends(queue: str, time_limit: Any) -> None:
    """Body, headers and properties match apply_async's for the same job, time limit or not."""
    app = _celery()
    app.tasks[PROCESS_TASK].apply_async((42,), task_id="t-42", queue=queue, time_limit=time_limit)
    expected = _pop(queue)
    sender = sender_for(app, queue)
    assert isinstance(sender, RedisSender)
    sender.send(PROCESS_TASK, 42, "t-42", queue, time_limit)
    assert _pop(queue) == expected


def test_publish_signal_receivers_get_every_message(queue: str) -> None:
    """With a before_task_publish receiver connected, messages go through apply_async."""
    app = _celery()
    seen: list[str] = []

    def receiver(headers: dict[str, Any], **_: Any) -> None:
        seen.append(headers["id"])

    before_task_publish.connect(receiver)
    try:
        assert sender_for(app, queue) is None
    finally:
        before_task_publish.disconnect(receiver)
    assert sender_for(app, queue) is not None


@pytest.mark.parametrize(
    "conf",
    [
        {"task_serializer": "pickle", "accept_content": ["pickle"]},
        {"task_compression": "gzip"},
        {"task_always_eager": True},
        {"broker_url": "memory://localhost/"},
        {"task_routes": {PROCESS_TASK: {"queue": "elsewhere"}}},
        {"task_default_priority": 5},
        {"task_send_sent_event": True},
    ],
)
def test_other_message_shapes_use_apply_async(queue: str, conf: dict[str, Any]) -> None:
    """Anything that would make apply_async's message other than the template's."""
    assert sender_for(_celery(**conf), queue) is None


def test_a_queue_routed_through_a_topic_exchange_uses_apply_async(queue: str) -> None:
    """Only a queue that is the list of its own name is pushed to directly."""
    routed = Queue(queue, Exchange("media", type="topic"), routing_key="media.#")
    assert sender_for(_celery(task_queues=[routed]), queue) is None
    plain = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)
    assert sender_for(_celery(task_queues=[plain]), queue) is not None
    expiring = Queue(queue, Exchange(queue, type="direct"), routing_key=queue, expires=60)
    assert sender_for(_celery(task_queues=[expiring]), queue) is None


def test_more_publishing_threads_than_connections_wait_their_turn(queue: str) -> None:
    """A pool of two connections serves 20 threads publishing at once, none refused."""
    sender = sender_for(_celery(broker_transport_options={"max_connections": 2}), queue)
    assert sender is not None
    errors: list[BaseException] = []
    start = threading.Barrier(20)

    def publish(n: int) -> None:
        start.wait()
        try:
            for i in range(10):
                sender.send(PROCESS_TASK, n * 100 + i, f"t-{n}-{i}", queue)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert redis.Redis.from_url(REDIS_URL).llen(queue) == 200


def test_a_connection_cut_while_idle_is_made_again(
    queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One failed push (a connection the network dropped) is tried again, not lost."""
    sender = sender_for(_celery(), queue)
    assert sender is not None
    real = sender._client.lpush
    failures = iter([redis.ConnectionError("Connection reset by peer")])

    def flaky(*args: Any) -> Any:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real(*args)

    monkeypatch.setattr(sender._client, "lpush", flaky)
    sender.send(PROCESS_TASK, 7, "t-7", queue)
    assert _pop(queue)["headers"]["id"] == "t-7"
