"""The result url: ``GET {ASYNC_REQUEST_URL_PREFIX}/result`` and ``/job/<token>/result``.

It serves a processed job's reply as bytes, with the headers the reply kept,
under the same token, owner binding and expiry as the status url: a reply held
in the result store is streamed a chunk at a time, and any reply answers
conditional (``If-None-Match``, ``If-Range``), range and ``HEAD`` requests.

The download link, ``GET {ASYNC_REQUEST_URL_PREFIX}/download/<signed>``, serves
the same reply the same way with no token: its short-lived signature names the
job, the owner and the SHA-256 of the bytes it may serve.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from flask import Response, current_app, request
from werkzeug.wsgi import wrap_file

from . import result_stores

# The status url's own checks, shared so the urls can never answer differently.
from .access import Refusal, database_errors, job_for_request, job_url_enabled, link_url
from .envelope import error_answer
from .exceptions import InvalidToken, JobNotFound, JobStateError
from .links import LinkClaims, LinkExpired, verify_link
from .models import Job, JobStatus
from .payloads import decode_headers
from .state import get_state
from .storage import LocalFile, Redirect, ResultMissing, ResultStore
from .store import JobReply, JobStore
from .tokens import MAX_TOKEN_LENGTH
from .views import blueprint

logger = logging.getLogger("flask_async_request")

#: The content type of a reply stored as text with none given, as Flask's own default.
_TEXT = "text/html; charset=utf-8"


@blueprint.get("/result", endpoint="result")
@blueprint.get("/job/<token>/result", endpoint="result_url")
def result(token: str | None = None) -> Any:
    """Serve the processed job's reply: 200, 206 for a range, 304 when the client has it."""
    try:
        if token is not None:
            job_url_enabled()
        claims, reply = job_for_request(token)
    except Refusal as refusal:
        return refusal.response
    if reply.status is not JobStatus.PROCESSED:
        return error_answer(f"The job is {reply.status.value}; it has no result.", 404)
    response = reply_response(get_state().store(), claims.job_id, reply)
    if token is None:
        # One url for every job, told apart by the token's header: a shared
        # cache must not answer one client with another's result.
        response.vary.add(get_state().settings.header_key)
    return response


@blueprint.get("/download/<signed>", endpoint="download")
def download(signed: str) -> Any:
    """Serve the result a download link names: as the result url does, with no token.

    404 for a link that is malformed or tampered with, whose job is gone, not
    processed, bound to another identity, or whose result is no longer the bytes
    the link was signed for; 410 for a link past its lifetime.
    """
    state = get_state()
    not_found = error_answer("Not found", 404)
    if len(signed) > MAX_TOKEN_LENGTH:
        return not_found
    try:
        claims = verify_link(state.settings, signed)
    except LinkExpired:
        return error_answer("The download link has expired; ask for a new one.", 410)
    except InvalidToken:
        return not_found
    try:
        with database_errors():
            reply = state.store().fetch_reply(claims.job_id)
    except Refusal as refusal:
        return refusal.response
    if (
        reply is None
        or reply.uid != claims.uid
        or reply.status is not JobStatus.PROCESSED
        or reply.owner != claims.owner
        # A job bound to an identity is that identity's, through a link too.
        or (reply.owner is not None and state.identity() != reply.owner)
        # Purged and processed again, or replaced by a retry: other bytes.
        or reply_digest(reply)[1] != claims.sha256
    ):
        return not_found
    return reply_response(state.store(), claims.job_id, reply)


def download_url(job: Job, *, expires_in: timedelta | int | None = None) -> str:
    """A short-lived signed link that downloads ``job``'s result, with no token.

    For ``<a href download>``, or a download manager: the link serves the
    result's bytes as the result url does (ranges, ``ETag``, ``HEAD``) until it
    expires (then ``410``), and only while the result is the one it was made
    for: a result purged or replaced by a retry answers ``404``, as does a job
    bound to an identity when the identity loader gives another. Call it in a
    request (the link is on its origin) or an app context with ``SERVER_NAME``::

        @app.get("/reports/<int:job_id>/link")
        def report_link(job_id):
            return {"href": download_url(db.get_or_404(Job, job_id), expires_in=60)}

    :param expires_in: the link's lifetime, seconds or a ``timedelta``;
        ``None``: ``ASYNC_REQUEST_LINK_EXPIRATION``.
    :raises JobNotFound: the job's row is gone.
    :raises JobStateError: the job is not processed, so it has no result.
    :raises ValueError: ``expires_in`` is less than a second.
    """
    reply = get_state().store().fetch_reply(job.id)
    if reply is None or reply.uid != job.uid:
        raise JobNotFound(job.id)
    if reply.status is not JobStatus.PROCESSED:
        raise JobStateError(
            f"Job {job.id} is {reply.status.value}; only a processed job has a result.",
            job.id,
            reply.status.value,
        )
    claims = LinkClaims(job.id, reply.uid, reply_digest(reply)[1], reply.owner)
    return link_url(claims, expires_in)


def reply_digest(reply: JobReply) -> tuple[int, str, bytes | None]:
    """A processed reply's size, SHA-256 (hex) and, for one kept in the row, its bytes.

    The SHA-256 is of the bytes the reply is served as: its ``ETag``, and what a
    download link is signed over, so another reply with other bytes does not
    match it.
    """
    if reply.stored:
        assert reply.result_size is not None and reply.result_sha256 is not None
        return reply.result_size, reply.result_sha256, None
    probe = Response(content_type=reply.content_type or _TEXT)
    charset = probe.mimetype_params.get("charset", "utf-8")
    try:
        data = (reply.response or "").encode(charset)
    except (LookupError, UnicodeEncodeError):
        data = (reply.response or "").encode()
    return len(data), hashlib.sha256(data).hexdigest(), data


def reply_response(store: JobStore, job_id: int, reply: JobReply) -> Response:
    """A processed job's reply as an HTTP response to the current request.

    Its bytes with the kept headers, ``Content-Length`` and a strong ``ETag``
    (the SHA-256 of the bytes); ``304`` for a matching ``If-None-Match``; a
    single range of ``Range`` (unless an ``If-Range`` does not match) as
    ``206``, or ``416`` when it is past the end; several ranges get the whole.
    """
    content_type = reply.content_type
    size, sha256, data = reply_digest(reply)
    served: Redirect | LocalFile | None = None
    if data is None:
        lifetime = int(get_state().settings.link_expiration.total_seconds())
        try:
            result_store, location = result_stores.locate(
                job_id, reply.attempts, reply.result_location
            )
            served = result_store.serve(location, expires_in=lifetime)
        except ResultMissing as e:
            logger.error("Job %s: %s", job_id, e)
            return _refusal("The job's result is gone.", 404)
        except Exception:
            # An object store out of reach, or its credentials missing: the log says which.
            logger.exception("Job %s: its result store cannot serve it now.", job_id)
            return _refusal("The result store is unavailable; try again later.", 503)
        if isinstance(served, Redirect):
            return _redirect(served.url)

    response = Response(status=200, content_type=content_type or _TEXT)
    for name, value in decode_headers(reply.headers):
        response.headers.add(name, value)
    if "Cache-Control" not in response.headers:
        # A capability url's answer: the client's to keep, no shared cache's.
        response.headers["Cache-Control"] = "private"
    response.set_etag(sha256)
    response.accept_ranges = "bytes"

    if request.if_none_match and request.if_none_match.contains_weak(sha256):
        response.status_code = 304
        return response

    start, stop = 0, size
    byte_range = request.range
    if byte_range is not None and len(byte_range.ranges) == 1 and _if_range_matches(sha256):
        bounds = byte_range.range_for_length(size)
        if bounds is None:
            unsatisfiable = error_answer("The range is past the end of the result.", 416)[0]
            unsatisfiable.status_code = 416
            unsatisfiable.headers["Content-Range"] = f"bytes */{size}"
            return unsatisfiable
        start, stop = bounds
        response.status_code = 206
        response.headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
    response.content_length = stop - start
    if data is not None:
        response.set_data(data[start:stop])
        return response
    response.direct_passthrough = True
    if isinstance(served, LocalFile):
        prefix = get_state().settings.x_accel_redirect
        if prefix is not None:
            # nginx sends the file from its internal location, ranges included.
            response.headers["X-Accel-Redirect"] = prefix + served.name
            return response
        if current_app.config.get("USE_X_SENDFILE"):
            # As Flask's send_file: the front server sends the file in place of the body.
            response.headers["X-Sendfile"] = served.path
            return response
        if start == 0 and stop == size:
            return _whole_file(response, served.path)
    response.response = _streamed(result_store, location, start, stop)
    return response


def _whole_file(response: Response, path: str) -> Response:
    """The whole of a result file as the body, through the server's ``wsgi.file_wrapper``.

    A server that has one (gunicorn) sends it with ``sendfile``; any other reads it
    a block at a time, as Flask's ``send_file`` does.
    """
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the WSGI server, with the body
    except FileNotFoundError:
        return _refusal("The job's result is gone.", 404)
    response.response = wrap_file(request.environ, file, buffer_size=1024 * 1024)
    return response


def _refusal(message: str, status: int) -> Response:
    """The JSON error answer of ``message``, as a response of ``status``."""
    response: Response = error_answer(message, status)[0]
    response.status_code = status
    return response


def _redirect(url: str) -> Response:
    """``303 See Other`` to a short-lived url of the result, which carries no token of ours."""
    response = Response(status=303)
    response.headers["Location"] = url
    # The url expires soon: no cache keeps the redirect longer than this answer.
    response.headers["Cache-Control"] = "no-store"
    return response


def _if_range_matches(sha256: str) -> bool:
    """Whether a ``Range`` applies: no ``If-Range``, or one naming the current bytes."""
    if_range = request.if_range
    if if_range.etag is None and if_range.date is None:
        return True
    # A date never matches, nor a weak ETag: the strong ETag is what names these bytes.
    weak = request.headers.get("If-Range", "").lstrip().startswith("W/")
    return if_range.etag == sha256 and not weak


def _streamed(store: ResultStore, location: str, start: int, stop: int) -> Iterator[bytes]:
    """The stored result's bytes, chunk by chunk; cut short if it is purged meanwhile."""
    try:
        yield from store.read(location, start, stop)
    except ResultMissing as e:
        # The status line is sent: all there is to do is end the body short of
        # its Content-Length, which the client sees.
        logger.warning("%s Its download ends short.", e)
