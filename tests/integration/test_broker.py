"""A job's message on a real broker: pushed straight to Redis, sent by apply_async to RabbitMQ."""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from flask_async_request import Job
from flask_async_request.broker import PROCESS_TASK, Message, publish, task_id
from tests import workers
from tests.conftest import AppFactory

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("FAR_TEST_BROKER_REDIS_URL", "redis://127.0.0.1:6379/11")
AMQP_URL = os.environ.get("FAR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"far-test-broker-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(REDIS_URL).delete(name)


def _pop(queue: str) -> dict[str, Any]:
    raw = redis.Redis.from_url(REDIS_URL).rpop(queue)
    assert isinstance(raw, bytes), f"nothing on {queue}"
    message: dict[str, Any] = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    return message


def test_a_job_s_message_is_on_its_redis_queue(make_app: AppFactory, queue: str) -> None:
    """create_and_enqueue leaves process_job(job id), with the job's task id, on the jobs queue."""
    app = make_app(CELERY={"broker_url": REDIS_URL}, ASYNC_REQUEST_QUEUE=queue)
    with app.app_context():
        job = Job.create_and_enqueue(workers.Echo, 1)
        job_id, uid = job.id, job.uid
        message = _pop(queue)
    assert message["headers"]["task"] == PROCESS_TASK
    assert message["headers"]["id"] == task_id(job_id, uid)
    assert message["body"][0] == [job_id]
    assert message["headers"]["eta"] is None


def test_a_retry_s_countdown_travels_with_its_message(make_app: AppFactory, queue: str) -> None:
    """A message with a countdown is sent by apply_async with its eta."""
    app = make_app(CELERY={"broker_url": REDIS_URL}, ASYNC_REQUEST_QUEUE=queue)
    with app.app_context():
        publish(Message(5, "uid"), countdown=30)
        message = _pop(queue)
    assert message["headers"]["id"] == task_id(5, "uid")
    assert message["headers"]["eta"] is not None


def test_a_job_s_message_reaches_rabbitmq(make_app: AppFactory) -> None:
    """On AMQP, the job's message is sent by apply_async and consumed from its queue."""
    name = f"far-test-broker-{uuid.uuid4().hex[:8]}"
    app = make_app(CELERY={"broker_url": AMQP_URL}, ASYNC_REQUEST_QUEUE=name)
    celery_app = app.extensions["celery"]
    with app.app_context():
        job = Job.create_and_enqueue(workers.Echo, 1)
        job_id, uid = job.id, job.uid
    with celery_app.connection_for_read() as connection:
        channel = connection.default_channel
        try:
            received = channel.basic_get(name, no_ack=True)
            assert received is not None, f"nothing on {name}"
            assert received.headers["id"] == task_id(job_id, uid)
            assert json.loads(received.body)[0] == [job_id]
        finally:
            channel.queue_delete(name)
