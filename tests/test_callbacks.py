"""callbacks: each delivery of a job's end is logged; an operator's redelivery is signed afresh."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_async_request import JobStatus, signals
from flask_async_request.callbacks import deliver, redeliver
from flask_async_request.deliveries import DELIVERED, FAILED, MAX_DELIVERIES, REFUSED, decode
from flask_async_request.exceptions import JobNotFound
from flask_async_request.webhooks import ID_HEADER, DeliveryError, NoCallback, verify_callback
from tests.conftest import SECRET, AppFactory, Receiver, add_job, job_calling, reload_job
from tests.integration.conftest import free_port


def test_a_delivery_is_logged_with_its_host_code_and_time(app: Flask, receiver: Receiver) -> None:
    """A delivered callback leaves an entry: host only, status code, duration."""
    job_id = job_calling(receiver.url + "?token=secret")
    assert deliver(job_id)
    [entry] = decode(reload_job(job_id).callback_deliveries)
    assert (entry.outcome, entry.host, entry.status_code, entry.error) == (
        DELIVERED,
        "127.0.0.1",
        200,
        None,
    )
    assert 0 <= entry.duration < 10 and not entry.redelivery
    assert "secret" not in (reload_job(job_id).callback_deliveries or "")


def test_failed_deliveries_keep_their_code_or_error_class(app: Flask) -> None:
    """A 503 is logged with its code; a receiver that is not there with the error's class."""
    answering = Receiver(status=503)
    try:
        job_id = job_calling(answering.url)
        with pytest.raises(DeliveryError):
            deliver(job_id, 1)
    finally:
        answering.server.shutdown()
    with pytest.raises(DeliveryError):
        deliver(job_id_absent := job_calling(f"http://127.0.0.1:{free_port()}/hook"), 2)
    [code] = decode(reload_job(job_id).callback_deliveries)
    assert (code.outcome, code.status_code, code.error) == (FAILED, 503, None)
    [absent] = decode(reload_job(job_id_absent).callback_deliveries)
    assert (absent.outcome, absent.status_code, absent.error) == (
        FAILED,
        None,
        "ConnectionRefusedError",
    )
    assert absent.delivery == 2


def test_a_refused_url_is_logged_as_refused(make_app: AppFactory) -> None:
    """A url the checks refuse is a refused entry, and never reached."""
    app = make_app(ASYNC_REQUEST_CALLBACK_ALLOW_PRIVATE=False)
    with app.app_context():
        job_id = job_calling("http://127.0.0.1:9/hook")
        assert deliver(job_id) is False
        [entry] = decode(reload_job(job_id).callback_deliveries)
    assert (entry.outcome, entry.error) == (REFUSED, "CallbackRefused")


def test_the_log_is_bounded(app: Flask, receiver: Receiver) -> None:
    """Many deliveries keep the newest MAX_DELIVERIES entries."""
    job_id = job_calling(receiver.url)
    for number in range(MAX_DELIVERIES + 3):
        deliver(job_id, number + 1)
    log = decode(reload_job(job_id).callback_deliveries)
    assert len(log) == MAX_DELIVERIES and log[-1].delivery == MAX_DELIVERIES + 3


def test_a_redelivery_is_signed_afresh_with_the_same_webhook_id(
    app: Flask, receiver: Receiver
) -> None:
    """redeliver POSTs once more, a valid signature, the same webhook-id; logged as such."""
    job_id = job_calling(receiver.url)
    assert deliver(job_id)
    entry = redeliver(job_id)
    assert entry.outcome == DELIVERED and entry.redelivery
    (first_body, first), (again_body, again) = receiver.calls
    assert first[ID_HEADER.title()] == again[ID_HEADER.title()] == entry.message_id
    assert first_body == again_body
    assert verify_callback(again_body, again, key=SECRET)
    assert [e.redelivery for e in decode(reload_job(job_id).callback_deliveries)] == [False, True]


def test_a_failed_redelivery_is_an_entry_not_an_error(app: Flask) -> None:
    """A receiver that is down gives a failed entry back; nothing raises."""
    job_id = job_calling(f"http://127.0.0.1:{free_port()}/hook")
    entry = redeliver(job_id)
    assert (entry.outcome, entry.error, entry.redelivery) == (
        FAILED,
        "ConnectionRefusedError",
        True,
    )


def test_redeliver_explains_what_cannot_be_redelivered(app: Flask, receiver: Receiver) -> None:
    """No such job, no callback url, or a job not ended: a typed error, nothing sent."""
    with pytest.raises(JobNotFound):
        redeliver(424242)
    with pytest.raises(NoCallback, match="no callback url"):
        redeliver(add_job(status=JobStatus.PROCESSED).id)
    with pytest.raises(NoCallback, match="waiting"):
        redeliver(job_calling(receiver.url, JobStatus.WAITING))
    assert receiver.calls == []


def test_each_delivery_is_signalled(app: Flask, receiver: Receiver) -> None:
    """callback_delivered carries the outcome, code, duration and whether it was a redelivery."""
    seen: list[dict[str, Any]] = []

    def record(sender: Flask, **extra: Any) -> None:
        seen.append(extra)

    job_id = job_calling(receiver.url)
    with signals.callback_delivered.connected_to(record):
        deliver(job_id)
        redeliver(job_id)
    assert [(s["job_id"], s["outcome"], s["status_code"], s["redelivery"]) for s in seen] == [
        (job_id, DELIVERED, 200, False),
        (job_id, DELIVERED, 200, True),
    ]
