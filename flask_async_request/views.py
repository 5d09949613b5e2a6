"""The status endpoint: ``GET`` and ``DELETE {ASYNC_REQUEST_URL_PREFIX}/job``.

Its errors are answered in the JSON envelope of :mod:`.envelope`.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any

from flask import Blueprint, Response, request

from .access import (
    Refusal,
    check_same_job,
    database_errors,
    job_for_request,
    job_url_enabled,
    result_hrefs,
    result_url,
)
from .envelope import answer_errors, error_answer
from .exceptions import JobFinished, JobNotFound
from .links import LinkClaims
from .models import Job, JobStatus
from .payloads import decode_headers
from .replies import finished_body, pending_body
from .state import get_state
from .store import JobReply
from .streams import END_ID, can_hold, event_stream, wants_stream
from .web import NewJob, cancel_job

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
answer_errors(blueprint)


def _reply_answer(job_id: int, reply: JobReply) -> tuple[dict[str, Any], int, dict[str, str]]:
    """202 with status and progress while pending; 200 with the stored reply when finished."""
    if not reply.status.finished:
        headers = {"Retry-After": str(get_state().settings.retry_after)}
        if request.view_args and request.view_args.get("token"):
            # Where to poll next: this very url, for clients that only follow Location.
            headers["Location"] = request.base_url
        return pending_body(reply), 202, headers
    result = None
    if reply.stored:
        token = request.view_args.get("token") if request.view_args else None
        assert reply.result_sha256 is not None
        link = LinkClaims(job_id, reply.uid, reply.result_sha256, reply.owner)
        href, download_href = result_hrefs(token, link)
        result = {
            "size": reply.result_size,
            "sha256": reply.result_sha256,
            "href": href,
            "download_href": download_href,
        }
    body = finished_body(
        reply.status,
        reply.status_code,
        reply.response,
        reply.content_type,
        headers=decode_headers(reply.headers),
        result=result,
    )
    return body, 200, {}


# RFC 7240's grammar, in RFC 9110's terms: a preference is a token with an
# optional value, then parameters of its own after semicolons.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_WORD = rf'(?:{_TOKEN}|"(?:[^"\\]|\\.)*")'
_PREFERENCE = re.compile(
    rf"[ \t]*({_TOKEN})(?:[ \t]*=[ \t]*({_WORD}))?"
    rf"(?:[ \t]*;(?:[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*{_WORD})?)?)*[ \t]*"
)
_DELTA_SECONDS = re.compile(r"[0-9]+")
#: RFC 9111's ceiling for delta-seconds: a longer number stands for this one.
_MAX_DELTA_SECONDS = 2**31


def preferences() -> dict[str, str | None]:
    """The preferences of the request's ``Prefer`` header (RFC 7240), by lowercase name.

    Several ``Prefer`` headers reach WSGI as one value, joined with commas. A
    preference that does not follow the grammar is ignored, as are the second
    and later instances of one name (RFC 7240, section 2); an empty value is no
    value. Parameters (``handling=lenient; wait=2``) belong to their preference
    and are not preferences themselves.
    """
    value = request.headers.get("Prefer", "")
    found: dict[str, str | None] = {}
    for element in _list_elements(value):
        match = _PREFERENCE.fullmatch(element)
        if match is None:
            continue
        name, word = match.group(1).lower(), match.group(2)
        if name in found:
            continue
        if word is not None and word.startswith('"'):
            word = re.sub(r"\\(.)", r"\1", word[1:-1])
        found[name] = word or None
    return found


def _list_elements(value: str) -> Iterator[str]:
    """The elements of a comma-separated header value, commas in quoted strings kept."""
    start, quoted, escaped = 0, False, False
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif quoted and char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            yield value[start:index]
            start = index + 1
    yield value[start:]


def requested_wait() -> int | None:
    """Seconds asked for with ``Prefer: wait=N`` (RFC 7240), or ``None``.

    ``N`` is delta-seconds, a non-negative integer: a ``wait`` with another
    value (``1.5``, ``1e3``, ``-1``) is a preference the server does not
    understand, and is ignored as RFC 7240 asks.
    """
    value = preferences().get("wait")
    if value is None or _DELTA_SECONDS.fullmatch(value) is None:
        return None
    # Leading zeros are digits of the same number; only the others make it long.
    digits = value.lstrip("0") or "0"
    return _MAX_DELTA_SECONDS if len(digits) > 10 else min(int(digits), _MAX_DELTA_SECONDS)


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
            job_url_enabled()
        claims, reply = job_for_request(token)
        wait = requested_wait()
        if wants_stream():
            if request.headers.get("Last-Event-ID") == END_ID and reply.status.finished:
                # Its end was read: 204 stops an EventSource from reconnecting.
                return Response(status=204)
            if can_hold(request.environ, get_state().settings.streams):
                return event_stream(
                    claims.job_id, claims.uid, lambda done: _reply_answer(claims.job_id, done)[0]
                )
            # A sync worker would be held for the stream's whole life: a long poll instead.
            wait = get_state().settings.max_wait
        applied = None
        if wait is not None and not reply.status.finished:
            applied = min(wait, get_state().settings.max_wait)
            if applied > 0:
                with database_errors():
                    waited = get_state().store().wait_until_finished(claims.job_id, applied)
                # The job may have been purged meanwhile: then it is gone, as for a plain GET.
                check_same_job(claims, waited)
                assert waited is not None  # _check_same_job refused a missing row.
                reply = waited
    except Refusal as refusal:
        return refusal.response
    if reply.status is JobStatus.PROCESSED and get_state().settings.redirect_finished:
        headers = {"Location": result_url(token)}
        if applied is not None:
            headers["Preference-Applied"] = f"wait={applied}"
        return Response(status=303, headers=headers)
    body, status, headers = _reply_answer(claims.job_id, reply)
    if applied is not None:
        headers["Preference-Applied"] = f"wait={applied}"
    return body, status, headers


@blueprint.delete("/job")
@blueprint.delete("/job/<token>")
def cancel(token: str | None = None) -> Any:
    """Cancel the job named by the request's token; 409 if it has finished already."""
    try:
        if token is not None:
            job_url_enabled()
        claims, _ = job_for_request(token)
        with database_errors():
            reply = cancel_job(claims.job_id)
    except Refusal as refusal:
        return refusal.response
    except JobFinished:
        return error_answer("The job has finished already and cannot be cancelled.", 409)
    except JobNotFound:
        return error_answer("Job not found", 404)
    return _reply_answer(claims.job_id, reply)


@functools.cache
def _openapi_template() -> str:
    return (resources.files(__package__) / "openapi.json").read_text(encoding="utf-8")


def openapi_document(document: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the status endpoint, with this app's prefix and header.

    With ``document``, an app's own OpenAPI 3.1 document, that document with the
    endpoint's paths and components added (a copy; ``document`` is left as it
    is). An app's operation that starts a job answers with ``accepted(job)``,
    and documents it by naming the library's response::

        "responses": {"202": {"$ref": "#/components/responses/AsyncRequestAccepted"}}

    whose links lead a client from the 202's ``token`` to the status operations;
    with per-owner admission limits, its 429 is ``AsyncRequestOwnerLimited``.
    The library's components are all named ``AsyncRequest...``.

    :raises ValueError: ``document`` is not OpenAPI 3.1, or already has one of
        the endpoint's paths, or a component of the same name that differs.
    """
    settings = get_state().settings
    library: dict[str, Any] = json.loads(_openapi_template())
    paths = library["paths"]
    components = library["components"]
    components["securitySchemes"]["asyncRequestToken"]["name"] = settings.header_key
    shared = paths.pop("/async_request/job")
    own = paths.pop("/async_request/job/{token}")
    shared_result = paths.pop("/async_request/result")
    own_result = paths.pop("/async_request/job/{token}/result")
    download = paths.pop("/async_request/download/{signed}")
    paths[f"{settings.url_prefix}/job"] = shared
    paths[f"{settings.url_prefix}/result"] = shared_result
    paths[f"{settings.url_prefix}/download/{{signed}}"] = download
    if settings.token_in_url:
        paths[f"{settings.url_prefix}/job/{{token}}"] = own
        paths[f"{settings.url_prefix}/job/{{token}}/result"] = own_result
    else:
        # No job urls: nothing to link to, and the token goes in the header only.
        del components["responses"]["AsyncRequestAccepted"]["links"]
        del components["responses"]["AsyncRequestPendingAtUrl"]
        del components["responses"]["AsyncRequestResult"]
        del components["parameters"]["AsyncRequestToken"]
    if document is None:
        return library
    return _merge_documents(document, library)


def _merge_documents(document: Mapping[str, Any], library: dict[str, Any]) -> dict[str, Any]:
    """``document`` with the library's paths and components added."""
    version = str(document.get("openapi", ""))
    if not version.startswith("3.1."):
        raise ValueError(
            f"The document's openapi is {version!r}; the endpoint's document is OpenAPI 3.1,"
            " so the app's document must be too (openapi: 3.1.0)."
        )
    merged = copy.deepcopy(dict(document))
    paths = merged.setdefault("paths", {})
    for path, operations in library["paths"].items():
        if path in paths:
            raise ValueError(
                f"The document already has the path {path!r}, which is the status endpoint's;"
                " remove it, or move the endpoint with ASYNC_REQUEST_URL_PREFIX."
            )
        paths[path] = operations
    components = merged.setdefault("components", {})
    for section, entries in library["components"].items():
        target = components.setdefault(section, {})
        for name, value in entries.items():
            if name in target and target[name] != value:
                raise ValueError(
                    f"The document's components.{section} has its own {name!r}; the"
                    " endpoint's document needs that name, so rename the app's."
                )
            target[name] = value
    return merged


@blueprint.get("/openapi.json")
def openapi() -> Any:
    """Serve the OpenAPI document of the status endpoint."""
    return openapi_document()


def job_url(job: Job | NewJob) -> str:
    """The url of ``job``'s status: its own (the token in the path), or the shared one.

    With ``ASYNC_REQUEST_TOKEN_IN_URL`` (the default) it names the job by
    itself, so any client can poll it; with the setting off it is the shared
    endpoint, and the token goes in the header.
    """
    state = get_state()
    if state.settings.token_in_url:
        return state.urls.external("async_request.job_url", "token", job.token)
    return state.urls.external("async_request.job")


def accepted(job: Job | NewJob, **extra: Any) -> tuple[dict[str, Any], int, dict[str, str]]:
    """The 202 answer of a view that started ``job``: token, url, Location, Retry-After.

    Extra keyword arguments join the JSON body::

        @app.post("/reports")
        def start_report():
            return accepted(Job.create_and_enqueue(Report, request.json["month"]))
    """
    url = job_url(job)
    headers = {"Location": url, "Retry-After": str(get_state().settings.retry_after)}
    return {"token": job.token, "url": url, **extra}, 202, headers
