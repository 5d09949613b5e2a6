"""Which job a request names, and whether it may see it: checks the status and result urls share.

The status url, the result url and the download link read a job the same way:
the token from the header or the url's path, its signature and expiry, the row
it names, the owner the job is bound to; a database out of reach is a 503, a
corrupt row a 409. Each check ends the request with a :class:`Refusal` that
carries the answer, so that every url answers alike. The urls a finished job's
envelope names (its result url, its download link) are made here too.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import sqlalchemy.exc
from flask import request

from .envelope import error_answer, unavailable_answer
from .exceptions import DatabaseUnavailable, InvalidJobRow, InvalidToken
from .links import LinkClaims, sign_link
from .state import get_state
from .store import JobReply, lost_connection
from .tokens import MAX_TOKEN_LENGTH, TokenClaims, token_from_header
from .urls import UrlTemplates

logger = logging.getLogger("flask_async_request")

__all__ = [
    "Refusal",
    "check_same_job",
    "database_errors",
    "job_for_request",
    "job_url_enabled",
    "link_url",
    "result_url",
]


class Refusal(Exception):
    """Ends a request early with an error answer, its ``response``."""

    def __init__(self, response: Any) -> None:
        super().__init__(response)
        self.response = response


def job_for_request(token: str | None = None) -> tuple[TokenClaims, JobReply]:
    """The job the request's token names, if this request may see it.

    :param token: the token from the job's own url; ``None``: from the header.
    :raises Refusal: 400 for a bad token, 404 for a job that does not exist (or
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
        raise Refusal(error_answer("Invalid token", 400)) from None
    with database_errors():
        reply = state.store().fetch_reply(claims.job_id)
    check_same_job(claims, reply)
    assert reply is not None  # check_same_job refused a missing row.
    # A job bound to an identity answers only that identity; to anyone else it
    # does not exist.
    if reply.owner is not None and (claims.owner != reply.owner or state.identity() != reply.owner):
        raise Refusal(error_answer("Job not found", 404))
    return claims, reply


def check_same_job(claims: TokenClaims, reply: JobReply | None) -> None:
    """Refuse with 404 unless ``reply`` is the row the token was signed for.

    A row with the same id but another uid is a different job (ids can be
    reused after a purge or a table reset): the token does not reach it.
    """
    if reply is None or reply.uid != claims.uid:
        raise Refusal(error_answer("Job not found", 404))


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """Turn a database that cannot be reached into a 503 refusal, and a corrupt row into 409.

    A pool with no connection free within its timeout is a 503 too.
    """
    try:
        yield
    except (sqlalchemy.exc.DBAPIError, DatabaseUnavailable) as e:
        if isinstance(e, sqlalchemy.exc.DBAPIError) and not lost_connection(e):
            raise
        logger.warning("The jobs database is unreachable; answering 503.", exc_info=True)
        raise Refusal(unavailable_answer()) from None
    except sqlalchemy.exc.TimeoutError:
        # Every connection of the pool is busy (a surge of requests): a 503 with
        # Retry-After, as for a database out of reach, rather than a 500.
        logger.warning("No database connection came free in time; answering 503.", exc_info=True)
        raise Refusal(unavailable_answer()) from None
    except InvalidJobRow as e:
        # Not the client's doing, and nothing it can fix by asking again soon; a
        # 409 says the job cannot be served as it is stored, and the log says why.
        logger.error("%s Answering 409.", e)
        raise Refusal(error_answer("The job's stored row is not valid.", 409)) from None


def job_url_enabled() -> None:
    """Refuse with 404 a job's own url where ``ASYNC_REQUEST_TOKEN_IN_URL`` is off."""
    if not get_state().settings.token_in_url:
        raise Refusal(error_answer("Not found", 404))


def result_url(token: str | None) -> str:
    """The job's result url, on this request's origin, with the token where the request had it.

    ``token``: the token of the job's own url (the path); ``None``: the header's,
    whose result url is shared and takes the token in the header again.
    """
    return _result_url(get_state().urls, token)


def result_hrefs(token: str | None, claims: LinkClaims) -> tuple[str, str]:
    """A stored result's ``href`` and ``download_href``, as a finished poll answers them.

    The result url (see :func:`result_url`) and the signed download link of
    ``claims``, for ``ASYNC_REQUEST_LINK_EXPIRATION``: what every poll of the
    finished job builds, so the app's state is looked up once for both.
    """
    state = get_state()
    lifetime = int(state.settings.link_expiration.total_seconds())
    signed = sign_link(state.settings, claims, lifetime)
    download = state.urls.external("async_request.download", "signed", signed)
    return _result_url(state.urls, token), download


def _result_url(urls: UrlTemplates, token: str | None) -> str:
    if token:
        return urls.external("async_request.result_url", "token", token)
    return urls.external("async_request.result")


def link_url(claims: LinkClaims, expires_in: timedelta | int | None = None) -> str:
    """The signed download link of the result ``claims`` name, on this request's origin.

    :param expires_in: its lifetime; ``None``: ``ASYNC_REQUEST_LINK_EXPIRATION``.
    :raises ValueError: ``expires_in`` is not a positive number of seconds.
    """
    state = get_state()
    settings = state.settings
    if expires_in is None:
        expires_in = settings.link_expiration
    seconds = expires_in.total_seconds() if isinstance(expires_in, timedelta) else expires_in
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 1:
        raise ValueError(
            f"expires_in is {expires_in!r}; a download link's lifetime is a number of seconds"
            " or a timedelta, of one second or more."
        )
    signed = sign_link(settings, claims, int(seconds))
    return state.urls.external("async_request.download", "signed", signed)
