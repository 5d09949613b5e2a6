"""The status endpoint: ``GET`` and ``DELETE {ASYNC_REQUEST_URL_PREFIX}/job``."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy.exc
from flask import Blueprint, Response, jsonify, request, url_for

from .exceptions import InvalidToken, JobFinished
from .jobs import cancel_job, fetch_reply
from .models import Job
from .state import get_state
from .store import JobReply
from .tokens import TokenClaims, token_from_header

logger = logging.getLogger("flask_async_request")

blueprint = Blueprint("async_request", __name__)

#: Seconds a client is asked to wait before polling again after a database outage.
UNAVAILABLE_RETRY_AFTER = 5


class _Refusal(Exception):
    """Ends a request early with an error answer."""

    def __init__(self, response: Any) -> None:
        self.response = response


def _error(message: str, status: int, **headers: Any) -> tuple[Response, int, dict[str, Any]]:
    return jsonify(errors=[{"message": message}]), status, headers


def _job_for_request() -> tuple[TokenClaims, JobReply]:
    """The job the request's token names, if this request may see it.

    :raises _Refusal: 400 for a bad token, 404 for a job that does not exist (or
        belongs to another identity), 503 when the database cannot be reached.
    """
    state = get_state()
    try:
        claims = state.verify_token(
            token_from_header(request.headers.get(state.settings.header_key))
        )
    except InvalidToken:
        raise _Refusal(_error("Invalid token", 400)) from None
    reply = _fetch(claims.job_id)
    # A row with the same id but another uid is a different job (ids can be reused
    # after a purge or a table reset): the token does not reach it.
    if reply is None or reply.uid != claims.uid:
        raise _Refusal(_error("Job not found", 404))
    # A job bound to an identity answers only that identity; to anyone else it
    # does not exist.
    if reply.owner is not None and (claims.owner != reply.owner or state.identity() != reply.owner):
        raise _Refusal(_error("Job not found", 404))
    return claims, reply


def _fetch(job_id: int) -> JobReply | None:
    try:
        return fetch_reply(job_id)
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError):
        logger.warning("The jobs database is unreachable; answering 503.", exc_info=True)
        raise _Refusal(
            _error(
                "The job store is unavailable; try again later.",
                503,
                **{"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
            )
        ) from None


def _answer(reply: JobReply) -> Any:
    """202 with status and progress while pending; 200 with the stored reply when finished."""
    if not reply.status.finished:
        body = {"status": reply.status.value, "progress": reply.progress, "message": reply.message}
        return body, 202, {"Retry-After": str(get_state().settings.retry_after)}
    return {
        "status": reply.status.value,
        "response": {"status_code": reply.status_code, "body": reply.response or ""},
    }


@blueprint.get("/job", endpoint="job")
def job_status() -> Any:
    """Answer with the job named by the request's token: 202 pending, 200 finished."""
    try:
        _, reply = _job_for_request()
    except _Refusal as refusal:
        return refusal.response
    return _answer(reply)


@blueprint.delete("/job")
def cancel() -> Any:
    """Cancel the job named by the request's token; 409 if it has finished already."""
    try:
        claims, _ = _job_for_request()
        try:
            cancel_job(claims.job_id)
        except JobFinished:
            return _error("The job has finished already and cannot be cancelled.", 409)
        except LookupError:
            return _error("Job not found", 404)
        reply = _fetch(claims.job_id)
    except _Refusal as refusal:
        return refusal.response
    assert reply is not None  # Cancelled rows are kept.
    return _answer(reply)


def accepted(job: Job, **extra: Any) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The 202 answer of a view that started ``job``: token, url, Location, Retry-After.

    Extra keyword arguments join the JSON body::

        @app.post("/reports")
        def start_report():
            return accepted(Job.create_and_enqueue(Report, request.json["month"]))
    """
    url = url_for("async_request.job", _external=True)
    headers = {"Location": url, "Retry-After": str(get_state().settings.retry_after)}
    return {"token": job.token, "url": url, **extra}, 202, headers
