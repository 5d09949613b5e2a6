"""The JSON error envelope, ``{"errors": [{"message": ...}]}``, and its handlers.

The status endpoint answers every error in it: its own refusals, an HTTP error
in one of its views, a url under its prefix that no view takes; and any view of
the app answers the library's errors raised in it (a reused Idempotency-Key, a
bad callback url, a database out of reach) in it too. :func:`answer_errors`
registers the handlers on the endpoint's blueprint.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, Response, jsonify, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RequestRedirect

from .exceptions import (
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidRequest,
    OwnerLimitExceeded,
)
from .state import get_state

logger = logging.getLogger("flask_async_request")

#: Seconds a client is asked to wait before polling again after a database outage.
UNAVAILABLE_RETRY_AFTER = 5


def error_answer(message: str, status: int, **headers: Any) -> tuple[Response, int, dict[str, Any]]:
    """The JSON error envelope, ``{"errors": [{"message": ...}]}``, with ``status``."""
    return jsonify(errors=[{"message": message}]), status, headers


def unavailable_answer() -> tuple[Response, int, dict[str, Any]]:
    """503 with ``Retry-After``: the jobs database is out of reach, ask again later."""
    return error_answer(
        "The job store is unavailable; try again later.",
        503,
        **{"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
    )


def http_error(error: HTTPException) -> Any:
    """An HTTP error in one of the endpoint's views (a 413, 415, ...): the JSON envelope."""
    return envelope_of(error)


def routing_error() -> Any:
    """A url under the endpoint's prefix that no view takes, or a method it does not: the envelope.

    Routing fails before any blueprint is chosen, so the blueprint's error
    handlers never see a 404 or a 405; an app-wide handler would take the app's
    own as well. This answers only under the prefix, and leaves redirects be.
    """
    error = request.routing_exception
    if (
        error is None
        or not isinstance(error, HTTPException)
        or isinstance(error, RequestRedirect)
        or not _under_prefix(request.path)
    ):
        return None
    return envelope_of(error)


def _under_prefix(path: str) -> bool:
    prefix = get_state().settings.url_prefix.rstrip("/")
    # At the root the endpoint shares every url with the app, whose answers they stay.
    return bool(prefix) and (path == prefix or path.startswith(f"{prefix}/"))


def envelope_of(error: HTTPException) -> Any:
    """``error`` answered with the JSON envelope, its status and its headers (``Allow``)."""
    if error.response is not None:
        return error.response
    headers = {name: value for name, value in error.get_headers() if name.lower() != "content-type"}
    name = error.name or "Error"
    return error_answer(name[0] + name[1:].lower(), error.code or 500, **headers)


def idempotency_conflict(error: IdempotencyConflict) -> Any:
    """A reused Idempotency-Key with other arguments: 422, in any view of the app."""
    return error_answer(str(error), 422)


def database_unavailable(error: DatabaseUnavailable) -> Any:
    """A job that could not be stored, the database out of reach: 503, in any view of the app.

    Unlike ``EnqueueError``, nothing was stored: there is no job the view could
    answer for, and the client asks again after ``Retry-After``, as it does
    when a poll gets the same answer.
    """
    logger.warning("%s Answering 503.", error, exc_info=error)
    return unavailable_answer()


def invalid_request(error: InvalidRequest) -> Any:
    """A client's bad Idempotency-Key or callback url: 400, in any view of the app."""
    return error_answer(str(error), 400)


def owner_limit_exceeded(error: OwnerLimitExceeded) -> Any:
    """A new job past its owner's admission limits: 429 with ``Retry-After``, in any view.

    Nothing was stored: the client asks again after ``Retry-After``.
    """
    return error_answer(str(error), 429, **{"Retry-After": str(error.retry_after)})


def answer_errors(blueprint: Blueprint) -> None:
    """Answer in the envelope: the endpoint's errors on ``blueprint``, the library's app-wide."""
    blueprint.register_error_handler(HTTPException, http_error)
    blueprint.before_app_request(routing_error)
    blueprint.app_errorhandler(IdempotencyConflict)(idempotency_conflict)
    blueprint.app_errorhandler(DatabaseUnavailable)(database_unavailable)
    blueprint.app_errorhandler(InvalidRequest)(invalid_request)
    blueprint.app_errorhandler(OwnerLimitExceeded)(owner_limit_exceeded)
