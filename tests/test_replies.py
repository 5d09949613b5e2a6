"""What a client reads of a job as JSON: a pending 202's body, a finished 200's, a callback's."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_async_request.models import JobStatus
from flask_async_request.replies import (
    PROGRESS_DIGITS,
    callback_payload,
    finished_body,
    pending_body,
)
from flask_async_request.statements import JobReply

FINISHED = [JobStatus.PROCESSED, JobStatus.FAILED, JobStatus.CANCELLED]


def _pending(progress: float | None, message: str | None = None) -> JobReply:
    return JobReply("u" * 32, None, JobStatus.PROCESSING, None, None, progress, message)


def test_pending_body_has_status_progress_and_message() -> None:
    """A pending job answers its status value, progress and message."""
    reply = JobReply("u" * 32, "alice", JobStatus.WAITING, None, None, 0.5, "half way")
    assert pending_body(reply) == {"status": "waiting", "progress": 0.5, "message": "half way"}


def test_pending_body_without_progress_says_null() -> None:
    """A job that reported nothing yet has null progress and message."""
    assert pending_body(_pending(None)) == {
        "status": "processing",
        "progress": None,
        "message": None,
    }


@pytest.mark.parametrize(
    ("progress", "answered"), [(1 / 3, 0.3333), (0.123456, 0.1235), (2 / 3, 0.6667), (1.0, 1.0)]
)
def test_pending_body_rounds_progress_to_four_places(progress: float, answered: float) -> None:
    """Progress is answered to PROGRESS_DIGITS decimal places."""
    assert PROGRESS_DIGITS == 4
    assert pending_body(_pending(progress))["progress"] == answered


@pytest.mark.parametrize("progress", [float("nan"), float("inf"), float("-inf")])
def test_pending_body_answers_null_for_what_json_cannot_hold(progress: float) -> None:
    """NaN or an infinity (a row edited by hand) is null, so the body stays strict JSON."""
    body = pending_body(_pending(progress))
    assert body["progress"] is None
    json.dumps(body, allow_nan=False)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_pending_body_is_strict_json_for_any_progress(progress: float) -> None:
    """Any stored float answers strict JSON, within 0.00005 of what was stored when finite."""
    answered = pending_body(_pending(progress))["progress"]
    json.dumps(answered, allow_nan=False)
    if answered is not None:
        assert abs(answered - progress) <= 0.5 * 10**-PROGRESS_DIGITS


@pytest.mark.parametrize("status", FINISHED)
def test_finished_body_has_the_status_and_the_response(status: JobStatus) -> None:
    """A finished job answers its status value and its stored code and body."""
    assert finished_body(status, 201, '{"id": 1}', None) == {
        "status": status.value,
        "response": {"status_code": 201, "body": '{"id": 1}'},
    }


def test_finished_body_has_a_content_type_only_when_given() -> None:
    """The response carries content_type when the worker gave one, and not for "" or None."""
    with_type = finished_body(JobStatus.PROCESSED, 200, "a,b", "text/csv")
    assert with_type["response"] == {"status_code": 200, "body": "a,b", "content_type": "text/csv"}
    for none in (None, ""):
        assert (
            "content_type" not in finished_body(JobStatus.PROCESSED, 200, "a,b", none)["response"]
        )


def test_finished_body_of_no_stored_body_is_an_empty_string() -> None:
    """A body stored as NULL is answered as "", never null."""
    assert finished_body(JobStatus.PROCESSED, 204, None, None)["response"]["body"] == ""


def test_callback_payload_is_compact_json_with_the_job_id_first() -> None:
    """The callback's body is the finished body with job_id in front, without spaces."""
    payload = callback_payload(7, JobStatus.FAILED, 500, '{"error": "x"}', None)
    assert payload == (
        b'{"job_id":7,"status":"failed",'
        b'"response":{"status_code":500,"body":"{\\"error\\": \\"x\\"}"}}'
    )


@given(
    job_id=st.integers(min_value=1, max_value=2**63 - 1),
    status=st.sampled_from(FINISHED),
    status_code=st.none() | st.integers(min_value=100, max_value=599),
    body=st.none() | st.text(),
    content_type=st.none() | st.text(),
)
def test_callback_payload_says_what_a_finished_poll_says(
    job_id: int,
    status: JobStatus,
    status_code: int | None,
    body: str | None,
    content_type: str | None,
) -> None:
    """For any end, the callback's JSON is the finished poll's body and the job's id."""
    payload = callback_payload(job_id, status, status_code, body, content_type)
    assert json.loads(payload) == {
        "job_id": job_id,
        **finished_body(status, status_code, body, content_type),
    }


def test_callback_payload_escapes_text_no_encoder_takes() -> None:
    """A body holding a lone surrogate still makes a payload of ASCII bytes."""
    payload = callback_payload(1, JobStatus.PROCESSED, 200, "a\ud800b")
    assert payload.isascii()
    assert json.loads(payload)["response"]["body"] == "a\ud800b"
