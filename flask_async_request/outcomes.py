"""What a run of a job produces, and how its errors read.

A run ends in an :class:`Outcome`, the status and reply to store; a failed or
cancelled job's reply is :func:`error_body`. An error raised while storing it
is either the database out of reach, worth another try later
(:func:`out_of_reach`), or a value it refused, which a client reads as the
library's sentence (:func:`storage_message`), never the driver's text.
"""

from __future__ import annotations

import json
import traceback as _traceback
from typing import Any, NamedTuple

from .exceptions import DatabaseUnavailable, InvalidJobRow
from .models import JobStatus
from .store import lost_connection


def error_body(message: str) -> str:
    """The reply body of a job that failed or was cancelled: ``{"error": message}``."""
    return json.dumps({"error": message})


def error_message(body: str | None) -> str:
    """The message of an :func:`error_body`; the body itself if it is not one."""
    try:
        message = json.loads(body or "")["error"]
    except (ValueError, TypeError, KeyError):
        return body or ""
    return message if isinstance(message, str) else json.dumps(message)


class Outcome(NamedTuple):
    """How a run ended: the status to store and the reply."""

    status: JobStatus
    status_code: int
    body: str
    content_type: str | None = None
    #: The kept headers, as the jobs table stores them.
    headers: str | None = None
    #: The size and SHA-256 of a reply written to the result store (``body`` is empty).
    result_size: int | None = None
    result_sha256: str | None = None
    #: Where that result is: ``None`` for the database's chunks.
    result_location: str | None = None
    #: The traceback of a worker's exception, for operators (see :func:`traceback_of`).
    traceback: str | None = None


#: The most characters of a failed job's traceback kept: its end, where the error is.
MAX_TRACEBACK = 16_000


def failure(message: str, traceback: str | None = None) -> Outcome:
    """The outcome of a run that failed with ``message``; ``traceback`` is kept for operators."""
    return Outcome(JobStatus.FAILED, 500, error_body(message), traceback=traceback)


def traceback_of(error: BaseException) -> str:
    """``error``'s traceback as text every database stores, its last :data:`MAX_TRACEBACK` chars."""
    text = "".join(_traceback.format_exception(type(error), error, error.__traceback__))
    # No NUL (PostgreSQL's text refuses it) and no lone surrogate (no encoding takes it).
    text = text.replace("\x00", "\N{REPLACEMENT CHARACTER}")
    text = text.encode("utf-8", "replace").decode("utf-8")
    if len(text) > MAX_TRACEBACK:
        text = "...\n" + text[-(MAX_TRACEBACK - 4) :]
    return text


def decode_params(job_id: int, params: str | None) -> tuple[list[Any], dict[str, Any]]:
    """The positional and keyword arguments stored as ``{"args": [...], "kwargs": {...}}``.

    :raises InvalidJobRow: for anything else (a row edited by hand).
    """
    try:
        decoded = json.loads(params or "")
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        args, kwargs = decoded.get("args", []), decoded.get("kwargs", {})
        if isinstance(args, list) and isinstance(kwargs, dict):
            return args, kwargs
    raise InvalidJobRow(
        f'Job {job_id}\'s stored params are not {{"args": [...], "kwargs": {{...}}}}:'
        f" {(params or '')[:100]!r}",
        job_id,
    )


def out_of_reach(error: BaseException) -> bool:
    """Whether ``error``, or an error it was raised from, says the database was out of reach.

    Such an error is worth another try, later: the job is left as it is, for
    its lease to run out and the sweeper to run it again. Any other error
    (``DataError``, ``IntegrityError``, a driver's ``ValueError``) would happen
    again, so the job fails instead, with an error of the library's.
    :class:`~flask_async_request.DatabaseUnavailable` (the store's retries ran out) is one.
    """
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, DatabaseUnavailable) or lost_connection(cause):
            return True
        cause = cause.__cause__
    return False


def storage_message(what: str, error: BaseException, *, plural: bool = False) -> str:
    """A client's sentence for a write of ``what`` the database refused with ``error``.

    The database's own message holds SQL and parameters: it goes to the log, never
    to a stored reply.
    """
    return (
        f"{what} could not be stored: the database refused {'them' if plural else 'it'}"
        f" ({type(error).__name__}; details are in the worker's log)."
    )
