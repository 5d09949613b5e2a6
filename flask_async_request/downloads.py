"""The result url: ``GET {ASYNC_REQUEST_URL_PREFIX}/result`` and ``/job/<token>/result``.

It serves a processed job's reply as bytes, with the headers the reply kept,
under the same token, owner binding and expiry as the status url: a reply held
in the result store is streamed a chunk at a time, and any reply answers
conditional (``If-None-Match``, ``If-Range``), range and ``HEAD`` requests.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from typing import Any

from flask import Response, request

from . import results

# The status url's own checks, shared so the two urls can never answer differently.
from .envelope import error_answer
from .models import JobStatus
from .payloads import decode_headers
from .state import get_state
from .store import JobReply, JobStore
from .views import _job_for_request, _job_url_enabled, _Refusal, blueprint

logger = logging.getLogger("flask_async_request")

#: The content type of a reply stored as text with none given, as Flask's own default.
_TEXT = "text/html; charset=utf-8"


@blueprint.get("/result", endpoint="result")
@blueprint.get("/job/<token>/result", endpoint="result_url")
def result(token: str | None = None) -> Any:
    """Serve the processed job's reply: 200, 206 for a range, 304 when the client has it."""
    try:
        if token is not None:
            _job_url_enabled()
        claims, reply = _job_for_request(token)
    except _Refusal as refusal:
        return refusal.response
    if reply.status is not JobStatus.PROCESSED:
        return error_answer(f"The job is {reply.status.value}; it has no result.", 404)
    response = reply_response(get_state().store(), claims.job_id, reply)
    if token is None:
        # One url for every job, told apart by the token's header: a shared
        # cache must not answer one client with another's result.
        response.vary.add(get_state().settings.header_key)
    return response


def reply_response(store: JobStore, job_id: int, reply: JobReply) -> Response:
    """A processed job's reply as an HTTP response to the current request.

    Its bytes with the kept headers, ``Content-Length`` and a strong ``ETag``
    (the SHA-256 of the bytes); ``304`` for a matching ``If-None-Match``; a
    single range of ``Range`` (unless an ``If-Range`` does not match) as
    ``206``, or ``416`` when it is past the end; several ranges get the whole.
    """
    content_type = reply.content_type
    data: bytes | None = None
    if reply.stored:
        assert reply.result_size is not None and reply.result_sha256 is not None
        size, sha256 = reply.result_size, reply.result_sha256
    else:
        probe = Response(content_type=content_type or _TEXT)
        charset = probe.mimetype_params.get("charset", "utf-8")
        try:
            data = (reply.response or "").encode(charset)
        except (LookupError, UnicodeEncodeError):
            data = (reply.response or "").encode()
        size, sha256 = len(data), hashlib.sha256(data).hexdigest()

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
    response.response = _streamed(store, job_id, reply.attempts, start, stop)
    response.direct_passthrough = True
    return response


def _if_range_matches(sha256: str) -> bool:
    """Whether a ``Range`` applies: no ``If-Range``, or one naming the current bytes."""
    if_range = request.if_range
    if if_range.etag is None and if_range.date is None:
        return True
    # A date never matches, nor a weak ETag: the strong ETag is what names these bytes.
    weak = request.headers.get("If-Range", "").lstrip().startswith("W/")
    return if_range.etag == sha256 and not weak


def _streamed(store: JobStore, job_id: int, attempt: int, start: int, stop: int) -> Iterator[bytes]:
    """The stored result's bytes, chunk by chunk; cut short if it is purged meanwhile."""
    try:
        yield from results.read(store, job_id, attempt, start, stop)
    except results.ChunkMissing as e:
        # The status line is sent: all there is to do is end the body short of
        # its Content-Length, which the client sees.
        logger.warning("%s Its download ends short.", e)
