"""The status endpoint: ``GET`` and ``DELETE {ASYNC_REQUEST_URL_PREFIX}/job``."""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
import math
import re
from collections.abc import Iterator
from importlib import resources
from typing import Any

import sqlalchemy.exc
from flask import Blueprint, Response, jsonify, request, url_for

from .exceptions import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidJobRow,
    InvalidRequest,
    InvalidToken,
    JobFinished,
    JobNotFound,
)
from .models import Job
from .state import get_state
from .store import JobReply, lost_connection
from .tokens import MAX_TOKEN_LENGTH, TokenClaims, token_from_header
from .web import cancel_job

logger = logging.getLogger("flask_async_request")


class _Blueprint(Blueprint):
    def send_static_file(self, filename: str) -> Response:
        response = super().send_static_file(filename)
        if filename.endswith(".mjs"):
            # Browsers run a module script only when it is served as JavaScript;
            # Python before 3.12 knows .mjs only from the system's mime.types,
            # where there is one. Set here, not in the process's mimetypes table.
            response.mimetype = "text/javascript"
        return response


#: Also serves the browser client: ``url_for("async_request.static", filename="async-request.js")``.
blueprint = _Blueprint("async_request", __name__, static_folder="static")

#: Seconds a client is asked to wait before polling again after a database outage.
UNAVAILABLE_RETRY_AFTER = 5


class _Refusal(Exception):
    """Ends a request early with an error answer."""

    def __init__(self, response: Any) -> None:
        self.response = response


def error_answer(message: str, status: int, **headers: Any) -> tuple[Response, int, dict[str, Any]]:
    """The JSON error envelope, ``{"errors": [{"message": ...}]}``, with ``status``."""
    return jsonify(errors=[{"message": message}]), status, headers


def _job_for_request(token: str | None = None) -> tuple[TokenClaims, JobReply]:
    """The job the request's token names, if this request may see it.

    :param token: the token from the job's own url; ``None``: from the header.
    :raises _Refusal: 400 for a bad token, 404 for a job that does not exist (or
        belongs to another identity), 503 when the database cannot be reached.
    """
    state = get_state()
    try:
        if token is None:
            token = token_from_header(request.headers.get(state.settings.header_key))
        elif len(token) > MAX_TOKEN_LENGTH:
            raise InvalidToken("token too long")
        claims = state.verify_token(token)
    except InvalidToken:
        raise _Refusal(error_answer("Invalid token", 400)) from None
    with _database():
        reply = state.store().fetch_reply(claims.job_id)
    _check_same_job(claims, reply)
    assert reply is not None  # _check_same_job refused a missing row.
    # A job bound to an identity answers only that identity; to anyone else it
    # does not exist.
    if reply.owner is not None and (claims.owner != reply.owner or state.identity() != reply.owner):
        raise _Refusal(error_answer("Job not found", 404))
    return claims, reply


def _check_same_job(claims: TokenClaims, reply: JobReply | None) -> None:
    """Refuse with 404 unless ``reply`` is the row the token was signed for.

    A row with the same id but another uid is a different job (ids can be
    reused after a purge or a table reset): the token does not reach it.
    """
    if reply is None or reply.uid != claims.uid:
        raise _Refusal(error_answer("Job not found", 404))


@contextlib.contextmanager
def _database() -> Iterator[None]:
    """Turn a database that cannot be reached into 503, and a corrupt row into 409."""
    try:
        yield
    except (sqlalchemy.exc.DBAPIError, DatabaseUnavailable) as e:
        if isinstance(e, sqlalchemy.exc.DBAPIError) and not lost_connection(e):
            raise
        logger.warning("The jobs database is unreachable; answering 503.", exc_info=True)
        raise _Refusal(unavailable_answer()) from None
    except InvalidJobRow as e:
        # Not the client's doing, and nothing it can fix by asking again soon; a
        # 409 says the job cannot be served as it is stored, and the log says why.
        logger.error("%s Answering 409.", e)
        raise _Refusal(error_answer("The job's stored row is not valid.", 409)) from None


def unavailable_answer() -> tuple[Response, int, dict[str, Any]]:
    """503 with ``Retry-After``: the jobs database is out of reach, ask again later."""
    return error_answer(
        "The job store is unavailable; try again later.",
        503,
        **{"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
    )


def _answer(reply: JobReply) -> tuple[dict[str, Any], int, dict[str, str]]:
    """202 with status and progress while pending; 200 with the stored reply when finished."""
    if not reply.status.finished:
        # JSON has no NaN or infinity, which a float column edited by hand may hold.
        progress = (
            reply.progress if reply.progress is None or math.isfinite(reply.progress) else None
        )
        body = {"status": reply.status.value, "progress": progress, "message": reply.message}
        headers = {"Retry-After": str(get_state().settings.retry_after)}
        if request.view_args and request.view_args.get("token"):
            # Where to poll next: this very url, for clients that only follow Location.
            headers["Location"] = request.base_url
        return body, 202, headers
    response: dict[str, Any] = {"status_code": reply.status_code, "body": reply.response or ""}
    if reply.content_type:
        response["content_type"] = reply.content_type
    return {"status": reply.status.value, "response": response}, 200, {}


_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d{1,6})\"?", re.IGNORECASE)


def requested_wait() -> int | None:
    """Seconds asked for with ``Prefer: wait=N`` (RFC 7240), or ``None``.

    Several ``Prefer`` headers reach WSGI as one value, joined with commas: one
    lookup reads them all (a header list would walk the whole environ).
    """
    match = _PREFER_WAIT.search(request.headers.get("Prefer", ""))
    return None if match is None else int(match.group(1))


def _job_url_enabled() -> None:
    """Answer 404 for a job's own url where ``ASYNC_REQUEST_TOKEN_IN_URL`` is off."""
    if not get_state().settings.token_in_url:
        raise _Refusal(error_answer("Not found", 404))


@blueprint.get("/job", endpoint="job")
@blueprint.get("/job/<token>", endpoint="job_url")
def job_status(token: str | None = None) -> Any:
    """Answer with the job named by the request's token: 202 pending, 200 finished.

    The token comes in the header, or in the path of the job's own url (the
    ``Location`` of its 202), so that a client that only follows ``Location``
    and ``Retry-After`` finishes the job. With ``Prefer: wait=N`` a pending job
    is waited for, up to N seconds (at most ``ASYNC_REQUEST_MAX_WAIT``), and
    the answer comes as soon as it finishes.
    """
    try:
        if token is not None:
            _job_url_enabled()
        claims, reply = _job_for_request(token)
        wait = requested_wait()
        applied = None
        if wait is not None and not reply.status.finished:
            applied = min(wait, get_state().settings.max_wait)
            if applied > 0:
                with _database():
                    waited = get_state().store().wait_until_finished(claims.job_id, applied)
                # The job may have been purged meanwhile: then it is gone, as for a plain GET.
                _check_same_job(claims, waited)
                assert waited is not None  # _check_same_job refused a missing row.
                reply = waited
    except _Refusal as refusal:
        return refusal.response
    body, status, headers = _answer(reply)
    if applied is not None:
        headers["Preference-Applied"] = f"wait={applied}"
    return body, status, headers


@blueprint.delete("/job")
@blueprint.delete("/job/<token>")
def cancel(token: str | None = None) -> Any:
    """Cancel the job named by the request's token; 409 if it has finished already."""
    try:
        if token is not None:
            _job_url_enabled()
        claims, _ = _job_for_request(token)
        with _database():
            reply = cancel_job(claims.job_id)
    except _Refusal as refusal:
        return refusal.response
    except JobFinished:
        return error_answer("The job has finished already and cannot be cancelled.", 409)
    except JobNotFound:
        return error_answer("Job not found", 404)
    return _answer(reply)


@blueprint.app_errorhandler(IdempotencyConflict)
def idempotency_conflict(error: IdempotencyConflict) -> Any:
    """A reused Idempotency-Key with other arguments: 422, in any view of the app."""
    return error_answer(str(error), 422)


@blueprint.app_errorhandler(DatabaseUnavailable)
def database_unavailable(error: DatabaseUnavailable) -> Any:
    """A job that could not be stored, the database out of reach: 503, in any view of the app.

    Unlike ``EnqueueError``, nothing was stored: there is no job the view could
    answer for, and the client asks again after ``Retry-After``, as it does
    when a poll gets the same answer.
    """
    logger.warning("%s Answering 503.", error, exc_info=error)
    return unavailable_answer()


@blueprint.app_errorhandler(InvalidRequest)
def invalid_request(error: InvalidRequest) -> Any:
    """A client's bad Idempotency-Key or callback url: 400, in any view of the app."""
    return error_answer(str(error), 400)


@functools.cache
def _openapi_template() -> str:
    return (resources.files(__package__) / "openapi.json").read_text(encoding="utf-8")


def openapi_document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of the status endpoint, with this app's prefix and header."""
    settings = get_state().settings
    document: dict[str, Any] = json.loads(_openapi_template())
    paths = document["paths"]
    operations = paths.pop("/async_request/job")
    operations["parameters"][0]["name"] = settings.header_key
    paths[f"{settings.url_prefix}/job"] = operations
    if settings.token_in_url:
        # The job's own url: the same operations, the token in the path.
        own = copy.deepcopy(operations)
        own["parameters"] = [
            {
                "name": "token",
                "in": "path",
                "required": True,
                "description": "The job's token, as the Location of its 202 gives it.",
                "schema": {"type": "string"},
            }
        ]
        for method in ("get", "delete"):
            own[method]["operationId"] += "ByUrl"
        paths[f"{settings.url_prefix}/job/{{token}}"] = own
    return document


@blueprint.get("/openapi.json")
def openapi() -> Any:
    """Serve the OpenAPI document of the status endpoint."""
    return openapi_document()


def job_url(job: Job) -> str:
    """The url of ``job``'s status: its own (the token in the path), or the shared one.

    With ``ASYNC_REQUEST_TOKEN_IN_URL`` (the default) it names the job by
    itself, so any client can poll it; with the setting off it is the shared
    endpoint, and the token goes in the header.
    """
    if get_state().settings.token_in_url:
        return url_for("async_request.job_url", token=job.token, _external=True)
    return url_for("async_request.job", _external=True)


def accepted(job: Job, **extra: Any) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The 202 answer of a view that started ``job``: token, url, Location, Retry-After.

    Extra keyword arguments join the JSON body::

        @app.post("/reports")
        def start_report():
            return accepted(Job.create_and_enqueue(Report, request.json["month"]))
    """
    url = job_url(job)
    headers = {"Location": url, "Retry-After": str(get_state().settings.retry_after)}
    return {"token": job.token, "url": url, **extra}, 202, headers
