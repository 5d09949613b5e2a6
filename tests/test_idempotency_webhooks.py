"""Idempotent creation and signed completion callbacks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask, request
from sqlalchemy.orm import scoped_session

from flask_async_request import Job, accepted
from flask_async_request.webhooks import verify_callback
from tests import workers
from tests.conftest import SECRET, Receiver, add_job, json_of, poll

# Idempotency ---------------------------------------------------------------------------


def test_idempotency_key_header_in_a_view(app: Flask) -> None:
    """A view passing the Idempotency-Key header: same token twice, 422 on misuse."""

    @app.post("/echo/<int:n>")
    def echo(n: int) -> Any:
        key = request.headers.get("Idempotency-Key")
        return accepted(Job.create_and_enqueue(workers.Echo, n, idempotency_key=key))

    client = app.test_client()
    first = client.post("/echo/1", headers={"Idempotency-Key": "abc"})
    again = client.post("/echo/1", headers={"Idempotency-Key": "abc"})
    assert first.status_code == again.status_code == 202
    claims = [json.loads(_payload(json_of(r)["token"]))["job_id"] for r in (first, again)]
    assert claims[0] == claims[1]
    conflict = client.post("/echo/2", headers={"Idempotency-Key": "abc"})
    assert conflict.status_code == 422
    assert "was used for job" in json_of(conflict)["errors"][0]["message"]


def _payload(token: str) -> str:
    import base64

    part = token.split(".")[1]
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)).decode()


# Callbacks -----------------------------------------------------------------------------


def test_processed_job_calls_back_signed(app: Flask, receiver: Receiver) -> None:
    """The job's end is POSTed, signed, with its reply."""
    job = Job.create_and_enqueue(workers.Echo, 5, callback_url=receiver.url)
    receiver.wait()
    body, headers = receiver.calls[0]
    assert json.loads(body) == {
        "job_id": job.id,
        "status": "processed",
        "response": {"status_code": 200, "body": job.response},
    }
    assert verify_callback(body, headers, key=SECRET)


@pytest.mark.parametrize(
    "reply",
    [
        [201, '{"id": 7}', "application/json"],
        ["bad_request", "no"],
        [200, None],
    ],
)
def test_callback_payload_is_the_poll_body_with_the_job_id(
    app: Flask, receiver: Receiver, reply: list[object]
) -> None:
    """The callback payload is the finished poll body with the job id in front."""
    job = Job.create_and_enqueue(workers.ReturnValue, reply, callback_url=receiver.url)
    receiver.wait()
    body, _ = receiver.calls[0]
    polled = poll(app.test_client(), job.token)
    assert polled.status_code == 200
    assert json.loads(body) == {"job_id": job.id, **polled.json}


def test_callback_payload_bytes(app: Flask, receiver: Receiver) -> None:
    """The payload is compact JSON in a fixed order: job_id, status, then the response."""
    job = Job.create_and_enqueue(
        workers.ReturnValue, [201, "ok", "text/plain"], callback_url=receiver.url
    )
    receiver.wait()
    assert receiver.calls[0][0] == (
        b'{"job_id":%d,"status":"processed","response":{"status_code":201,"body":"ok",'
        b'"content_type":"text/plain"}}' % job.id
    )


def test_a_failed_job_calls_back_with_its_poll_body(app: Flask, receiver: Receiver) -> None:
    """A failed job's callback carries what its poll answers: status failed, 500, the error."""
    job = Job.create_and_enqueue(workers.Boom, callback_url=receiver.url)
    receiver.wait()
    payload = json.loads(receiver.calls[0][0])
    assert payload == {"job_id": job.id, **poll(app.test_client(), job.token).json}
    assert payload["status"] == "failed"
    assert payload["response"]["status_code"] == 500


def test_failing_receiver_is_retried_with_the_same_webhook_id(app: Flask) -> None:
    """A receiver answering 500 gets the callback again, with the same webhook-id."""
    server = Receiver(status=500)
    try:
        Job.create_and_enqueue(workers.Echo, callback_url=server.url)
        server.wait(2)
    finally:
        server.server.shutdown()
    ids = {headers["Webhook-Id"] for _, headers in server.calls}
    timestamps = [headers["Webhook-Timestamp"] for _, headers in server.calls]
    assert len(ids) == 1
    assert all(t.isdigit() for t in timestamps)


def test_failed_and_cancelled_jobs_call_back(
    app: Flask, receiver: Receiver, session: scoped_session[Any]
) -> None:
    """Failures and cancellations are announced too."""
    Job.create_and_enqueue(workers.Boom, "no", callback_url=receiver.url)
    job = add_job()
    job.callback_url = receiver.url
    session.commit()
    client = app.test_client()
    client.delete("/async_request/job", headers={"X-JOB-AUTHORIZATION": job.token})
    receiver.wait(2)
    statuses = [json.loads(body)["status"] for body, _ in receiver.calls]
    assert statuses == ["failed", "cancelled"]
