"""The status endpoint: ``GET {ASYNC_REQUEST_URL_PREFIX}/job``."""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy.exc
from flask import Blueprint, Response, jsonify, request

from .exceptions import InvalidToken
from .jobs import fetch_reply
from .state import get_state
from .tokens import token_from_header

logger = logging.getLogger("flask_async_request")

blueprint = Blueprint("async_request", __name__)

#: Seconds a client is asked to wait before polling again after a database outage.
UNAVAILABLE_RETRY_AFTER = 5


def _error(message: str, status: int, **headers: Any) -> tuple[Response, int, dict[str, Any]]:
    return jsonify(errors=[{"message": message}]), status, headers


@blueprint.get("/job", endpoint="job")
def job_status() -> Any:
    """Answer with the job named by the request's token: 202 pending, 200 finished."""
    state = get_state()
    settings = state.settings
    try:
        claims = state.verify_token(token_from_header(request.headers.get(settings.header_key)))
    except InvalidToken:
        return _error("Invalid token", 400)
    try:
        reply = fetch_reply(claims.job_id)
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError):
        logger.warning("The jobs database is unreachable; answering 503.", exc_info=True)
        return _error(
            "The job store is unavailable; try again later.",
            503,
            **{"Retry-After": str(UNAVAILABLE_RETRY_AFTER)},
        )
    # A row with the same id but another uid is a different job (ids can be reused
    # after a purge or a table reset): the token does not reach it.
    if reply is None or reply.uid != claims.uid:
        return _error("Job not found", 404)
    # A job bound to an identity answers only that identity; to anyone else it
    # does not exist.
    if reply.owner is not None and (claims.owner != reply.owner or state.identity() != reply.owner):
        return _error("Job not found", 404)
    if not reply.status.finished:
        return jsonify(status=reply.status.value), 202
    return jsonify(
        status=reply.status.value,
        response={"status_code": reply.status_code, "body": reply.response or ""},
    )
