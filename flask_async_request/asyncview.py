"""Turn an existing view into an asynchronous one with one decorator.

The request (method, path, query, body and chosen headers) is stored with the
job; a worker replays it through the app, under an equivalent request context
with the app's ``before_request`` hooks and error handlers, and the view's
response (status, body, content type and the headers a reply keeps, see
:data:`~flask_async_request.payloads.KEPT_HEADERS`) becomes the job's reply,
``send_file``'s and streamed responses included::

    @app.post("/reports/<int:year>")
    @asynchronous
    def report(year):
        return render_report(year, request.args["format"]), 201

The client gets 202 (see :func:`~flask_async_request.accepted`) and polls. With
``Prefer: wait=N`` a job that finishes within N seconds answers directly with the
view's own response; ``Prefer: respond-async`` always gets the 202.
"""

from __future__ import annotations

import base64
import functools
import logging
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

import sqlalchemy.exc
from flask import request

from .downloads import reply_response
from .envelope import error_answer, unavailable_answer
from .exceptions import DatabaseUnavailable, EnqueueError, WorkerResolutionError
from .models import Job, JobStatus
from .payloads import kept_headers
from .state import current_flask_app, get_state
from .store import lost_connection
from .views import accepted, preferences, requested_wait
from .web import NewJob, submit_job
from .worker import Reply, Worker

F = TypeVar("F", bound=Callable[..., Any])

logger = logging.getLogger("flask_async_request")

#: Marks a replayed request, so the decorated view runs instead of enqueueing.
REPLAY_KEY = "flask_async_request.replay"
#: Headers stored by default. ``Authorization`` and ``Cookie`` are left out on
#: purpose: they would be stored in clear with the job; name them to keep them.
DEFAULT_HEADERS = ("Accept", "Accept-Language", "Content-Type")
#: Largest request body stored with a job, by default (1 MiB): it is kept in the
#: jobs table until the job is purged.
MAX_BODY_SIZE = 1024 * 1024


@overload
def asynchronous(view: F) -> F: ...
@overload
def asynchronous(
    *, headers: Iterable[str] = DEFAULT_HEADERS, max_body_size: int = MAX_BODY_SIZE
) -> Callable[[F], F]: ...
def asynchronous(
    view: F | None = None,
    *,
    headers: Iterable[str] = DEFAULT_HEADERS,
    max_body_size: int = MAX_BODY_SIZE,
) -> F | Callable[[F], F]:
    """Run the decorated view in a worker; the client gets 202 and polls for its response.

    :param headers: request headers stored with the job and replayed to the view.
    :param max_body_size: the largest request body stored with the job, in bytes;
        a larger one is answered 413 and nothing is stored.
    """
    kept = tuple(headers)

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if request.environ.get(REPLAY_KEY):
                return function(*args, **kwargs)
            if (request.content_length or 0) > max_body_size or (
                len(request.get_data(cache=True)) > max_body_size
            ):
                return error_answer(f"The request body is larger than {max_body_size} bytes.", 413)
            try:
                job = submit_job(
                    ViewWorker,
                    [capture_request(kept)],
                    {},
                    # Present but empty is a client's mistake, refused with 400 as
                    # create_and_enqueue refuses it, rather than no key at all.
                    idempotency_key=request.headers.get("Idempotency-Key"),
                )
            except EnqueueError as e:
                if e.job is None:
                    raise
                # Stored all the same: a 5xx would have the client submit it again.
                logger.warning("%s The sweeper sends it once the broker is back.", e)
                return accepted(e.job)
            except DatabaseUnavailable as e:
                # Nothing stored: the client asks again later.
                logger.warning("%s Answering 503.", e, exc_info=e)
                return unavailable_answer()
            return _answer(job)

        wrapper._async_request_view = True  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate(view) if view is not None else decorate


def _answer(job: Job | NewJob) -> Any:
    """202 for the new job; the view's own response if it finishes within ``Prefer: wait``."""
    wait = requested_wait()
    if wait and "respond-async" not in preferences():
        seconds = min(wait, get_state().settings.max_wait)
        try:
            reply = get_state().store().wait_until_finished(job.id, seconds) if seconds else None
        except sqlalchemy.exc.DBAPIError as e:
            if not lost_connection(e):
                raise
            # The job is stored: its 202, not a 5xx that would have it submitted again.
            logger.warning("Job %s: waiting for it, the database was lost; answering 202.", job.id)
            reply = None
        if reply is not None and reply.status is JobStatus.PROCESSED:
            response = reply_response(get_state().store(), job.id, reply)
            if response.status_code == 200:
                response.status_code = reply.status_code or 200
            response.headers["Preference-Applied"] = f"wait={seconds}"
            return response
        # Waited for, but not done (or failed): the 202 says the wait was applied,
        # as a pending poll of the status endpoint does.
        body, status, headers = accepted(job)
        headers["Preference-Applied"] = f"wait={seconds}"
        return body, status, headers
    return accepted(job)


def capture_request(headers: Iterable[str]) -> dict[str, Any]:
    """What the worker needs to replay the current request (JSON-serialisable)."""
    return {
        "method": request.method,
        "path": request.path,
        "base_url": request.host_url,
        "query_string": request.query_string.decode("latin-1"),
        "headers": {name: request.headers[name] for name in headers if name in request.headers},
        "body": base64.b64encode(request.get_data()).decode("ascii"),
    }


class ViewWorker(Worker):
    """Replays a stored request through the app and returns the view's response."""

    def execute(self, snapshot: dict[str, Any]) -> Reply:
        app = current_flask_app()
        with app.test_request_context(
            snapshot["path"],
            base_url=snapshot["base_url"],
            method=snapshot["method"],
            query_string=snapshot["query_string"],
            headers=snapshot["headers"],
            data=base64.b64decode(snapshot["body"]),
            environ_overrides={REPLAY_KEY: True},
        ):
            rule = request.url_rule
            view = app.view_functions.get(rule.endpoint) if rule is not None else None
            if view is None or not getattr(view, "_async_request_view", False):
                # Only views that asked to run asynchronously are replayed.
                raise WorkerResolutionError(
                    f"{snapshot['method']} {snapshot['path']} is not an asynchronous view."
                )
            response = app.full_dispatch_request()
            if response.is_streamed or response.direct_passthrough:
                # send_file's file or a generator: read a chunk at a time into the
                # result store, once the request is over (as a WSGI server would).
                return response
            data = response.get_data()
        headers = kept_headers(response.headers.items(), strict=False)
        try:
            body = data.decode(response.mimetype_params.get("charset", "utf-8"))
        except (UnicodeDecodeError, LookupError):
            return response.status_code, data, response.content_type, headers
        return response.status_code, body, response.content_type, headers
