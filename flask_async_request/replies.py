"""What a client reads of a job, as JSON: the status endpoint's bodies and the callback's payload.

One place turns a stored reply into JSON, so a poll and a callback say the same
of a job's end: the callback's payload is the finished poll's body with the
job's id in front.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from .models import JobStatus
from .store import JobReply
from .values import finite

#: Kept headers: ``(name, value)`` pairs.
Headers = Sequence[tuple[str, str]]

#: Decimal places of the progress in an answer.
PROGRESS_DIGITS = 4

__all__ = ["PROGRESS_DIGITS", "callback_payload", "finished_body", "pending_body"]


def pending_body(reply: JobReply) -> dict[str, Any]:
    """The body of a pending job's 202: ``{"status", "progress", "message"}``."""
    progress = finite(reply.progress)
    if progress is not None:
        # A fraction of many digits says no more than four do.
        progress = round(progress, PROGRESS_DIGITS)
    return {"status": reply.status.value, "progress": progress, "message": reply.message}


def finished_body(
    status: JobStatus,
    status_code: int | None,
    body: str | None,
    content_type: str | None,
    *,
    headers: Headers = (),
    result: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The body of a finished job's 200: ``{"status", "response": {"status_code", "body"}}``.

    The response has a ``content_type`` when the worker gave one, and
    ``headers`` (``[[name, value], ...]``) when the reply kept some. A reply
    held in the result store has no ``body``: ``result`` instead (its ``size``,
    ``sha256`` and, for a client, the ``href`` of the job's result url) joins
    the response.
    """
    response: dict[str, Any] = {"status_code": status_code}
    if result is None:
        response["body"] = body or ""
    if content_type:
        response["content_type"] = content_type
    if headers:
        response["headers"] = [list(pair) for pair in headers]
    if result is not None:
        response.update(result)
    return {"status": status.value, "response": response}


def callback_payload(
    job_id: int,
    status: JobStatus,
    status_code: int | None,
    body: str | None,
    content_type: str | None = None,
    *,
    headers: Headers = (),
    result: Mapping[str, Any] | None = None,
) -> bytes:
    """The JSON body announcing job ``job_id``'s end: its id, then :func:`finished_body`."""
    finished = finished_body(
        status, status_code, body, content_type, headers=headers, result=result
    )
    payload = {"job_id": job_id, **finished}
    return json.dumps(payload, separators=(",", ":")).encode()
