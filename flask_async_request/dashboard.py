"""The jobs dashboard: an optional blueprint for operators, closed unless the app authorises.

Register it with :meth:`AsyncRequest.init_dashboard
<flask_async_request.AsyncRequest.init_dashboard>`. It lists jobs newest first
(filtered by status, worker and age, paged by id), shows one job, and retries or
cancels jobs through the same functions as the command line and the status
endpoint. Every read is an indexed query: a page is one range scan of an index
that ends with ``id``, however large the table.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import secrets
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from werkzeug.wrappers import Response

from . import dashboard_bulk, dashboard_queues, deliveries
from .access import link_url
from .callbacks import redeliver
from .dashboard_format import (
    format_elapsed,
    format_iso,
    format_moment,
    format_percent,
    shown,
    timings,
)
from .exceptions import EnqueueError, JobFinished, JobNotFailed, JobNotFound
from .lifecycle import error_message
from .links import LinkClaims
from .maintenance import retry_job
from .models import Job, JobStatus
from .payloads import decode_headers
from .reading import (
    COUNT_WINDOW,
    PAGE_SIZE,
    JobFilter,
    JobPage,
    find_job,
    job_page,
    load_job,
    status_counts,
)
from .state import EXTENSION_KEY, get_state
from .values import as_utc, format_size, utcnow
from .web import cancel_job
from .webhooks import NoCallback

logger = logging.getLogger("flask_async_request")

#: Where the dashboard's state is kept in ``app.extensions``.
DASHBOARD_KEY = "async_request_dashboard"
DEFAULT_URL_PREFIX = "/async-request/dashboard"

#: Answers whether the current request may use the dashboard (it reads ``flask.request``,
#: ``flask_login.current_user`` and so on). Only ``True`` opens it.
Authorize = Callable[[], bool]

blueprint = Blueprint("async_request_dashboard", __name__, template_folder="templates")
dashboard_bulk.add_views(blueprint)
dashboard_queues.add_views(blueprint)

_CSRF_SESSION_KEY = "_async_request_dashboard_csrf"
_CSRF_FIELD = "csrf_token"


@dataclasses.dataclass(frozen=True)
class DashboardState:
    """One app's dashboard settings, kept in ``app.extensions["async_request_dashboard"]``."""

    authorize: Authorize | None


def init_dashboard(
    app: Flask, *, authorize: Authorize | None, url_prefix: str = DEFAULT_URL_PREFIX
) -> None:
    """Register the jobs dashboard on ``app`` (see :meth:`AsyncRequest.init_dashboard`).

    :raises RuntimeError: ``init_app`` has not run on the app, or the dashboard is
        registered on it already.
    :raises TypeError: ``authorize`` is neither callable nor ``None``.
    :raises ValueError: ``url_prefix`` does not start with ``/``.
    """
    if EXTENSION_KEY not in app.extensions:
        raise RuntimeError(
            "flask-async-request is not initialised on this app; call"
            " async_request.init_app(app) before async_request.init_dashboard(app, ...)."
        )
    if DASHBOARD_KEY in app.extensions:
        raise RuntimeError(
            "The jobs dashboard is already registered on this app; call init_dashboard once"
            " per app."
        )
    if authorize is not None and not callable(authorize):
        raise TypeError(
            f"authorize is {authorize!r}; expected a function of no arguments that returns"
            " True for a request allowed to use the dashboard."
        )
    if not isinstance(url_prefix, str) or not url_prefix.startswith("/"):
        raise ValueError(
            f"url_prefix is {url_prefix!r}; expected a path such as {DEFAULT_URL_PREFIX!r}."
        )
    app.extensions[DASHBOARD_KEY] = DashboardState(authorize=authorize)
    if authorize is None:
        # Not even registered: every dashboard url, whatever its method, is a 404.
        logger.warning(
            "The jobs dashboard has no authorize callback, so it stays closed (every dashboard"
            " url answers 404); pass init_dashboard(app, authorize=...) to open it."
        )
        return
    app.register_blueprint(blueprint, url_prefix=url_prefix.rstrip("/"))


# Closed unless authorised; CSRF on every POST --------------------------------------------


@blueprint.before_request
def _guard() -> None:
    """Fail closed: 403 unless the app's callback says ``True``; 400 on a bad CSRF token."""
    state: DashboardState | None = current_app.extensions.get(DASHBOARD_KEY)
    # The blueprint registered by hand, without init_dashboard and its callback: closed.
    if state is None or state.authorize is None:
        abort(404)
    # Anything but True (None, a truthy string, a user object) keeps it closed.
    if state.authorize() is not True:
        abort(403)
    if request.method not in ("GET", "HEAD", "OPTIONS") and not _csrf_ok():
        abort(400, description="The form's CSRF token is missing or wrong; reload the page.")
    g.async_request_dashboard_nonce = secrets.token_urlsafe(16)


@blueprint.after_request
def _headers(response: Response) -> Response:
    """No script, no framing, no caching; styles only from the page's own nonce."""
    nonce = g.get("async_request_dashboard_nonce")
    style = f"'nonce-{nonce}'" if nonce else "'none'"
    # No script at all may run: even a reply that slipped past escaping stays inert.
    response.headers["Content-Security-Policy"] = (
        f"default-src 'none'; style-src {style}; form-action 'self'; frame-ancestors 'none';"
        " base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"
    return response


def csrf_token() -> str:
    """This session's CSRF token, made on first use and kept in Flask's session."""
    token = session.get(_CSRF_SESSION_KEY)
    if not isinstance(token, str):
        token = session[_CSRF_SESSION_KEY] = secrets.token_urlsafe(32)
    return token


def _csrf_ok() -> bool:
    """Whether the submitted form carries this session's CSRF token."""
    expected = session.get(_CSRF_SESSION_KEY)
    submitted = request.form.get(_CSRF_FIELD, "")
    return isinstance(expected, str) and hmac.compare_digest(expected, submitted)


@blueprint.context_processor
def _helpers() -> dict[str, Any]:
    """What the dashboard's templates use besides their own variables."""
    return {
        "csrf_field": _CSRF_FIELD,
        "csrf_token": csrf_token,
        "csp_nonce": g.get("async_request_dashboard_nonce", ""),
        "moment": format_moment,
        "iso": format_iso,
        "duration": format_elapsed,
        "percent": format_percent,
        "size": format_size,
        "statuses": list(JobStatus),
    }


@dataclasses.dataclass(frozen=True)
class StoredResult:
    """What the job's page shows of a reply held in the result store."""

    size: int
    sha256: str
    content_type: str | None
    #: A signed download link, short-lived; ``None`` when the job is not processed.
    href: str | None
    #: When the link stops working.
    expires_at: datetime | None


def stored_result(job: Job) -> StoredResult | None:
    """The job's reply in the result store, with a signed link to it; ``None`` for none.

    The link is a download link (``links.py``), never the job's token: it names
    these bytes alone, for ``ASYNC_REQUEST_LINK_EXPIRATION``, and a job bound
    to an owner serves it to that owner only, as every download link does.
    """
    if job.result_size is None or job.result_sha256 is None:
        return None
    href = expires_at = None
    if job.status is JobStatus.PROCESSED:
        lifetime = get_state().settings.link_expiration
        href = link_url(LinkClaims(job.id, job.uid, job.result_sha256, job.owner), lifetime)
        expires_at = utcnow() + lifetime
    return StoredResult(job.result_size, job.result_sha256, job.content_type, href, expires_at)


# The views ------------------------------------------------------------------------------


#: The query arguments of a list's filters, kept as typed in links to other pages.
_FILTER_ARGS = ("status", "worker", "owner", "older_than", "newer_than", "refresh")
#: Seconds between two loads of a list, unless its reader pauses them (``refresh=0``).
REFRESH_SECONDS = 10


@blueprint.get("/", endpoint="jobs")
def list_view() -> Any:
    """Jobs newest first, filtered and paged; a search by id or uid opens that job."""
    search = request.args.get("q", "").strip()
    if search:
        found = find_job(search)
        if found is not None:
            return redirect(url_for(".job", job_id=found), 303)
        # Anything else is an owner's name.
        args: dict[str, Any] = {k: v for k, v in request.args.items() if k != "q"}
        return redirect(url_for(".jobs", **{**args, "owner": search}), 303)
    query = {key: value for key in _FILTER_ARGS if (value := request.args.get(key, "").strip())}
    now = utcnow()

    def list_url(**changes: str | int | None) -> str:
        """This list's url with some arguments changed; ``None`` drops one."""
        args = {**query, **changes}
        values: dict[str, Any] = {key: value for key, value in args.items() if value is not None}
        return url_for(".jobs", **values)

    def since(moment: datetime) -> timedelta:
        """How long ago ``moment`` was."""
        return now - as_utc(moment)

    def ran(started: datetime | None, finished: datetime | None) -> timedelta | None:
        """How long a job ran, or has been running."""
        if started is None:
            return None
        return (now if finished is None else as_utc(finished)) - as_utc(started)

    refresh = request.args.get("refresh", type=int)
    counts, more = status_counts()
    context: dict[str, Any] = {
        "query": query,
        "list_url": list_url,
        "since": since,
        "ran": ran,
        "refresh": REFRESH_SECONDS if refresh is None else max(refresh, 0),
        "counts": counts,
        "counted_window": COUNT_WINDOW if more else None,
    }
    try:
        filters = JobFilter.from_args(request.args)
    except ValueError as e:
        empty = JobPage([], None, None)
        return render_template(
            "async_request_dashboard/jobs.html",
            **context,
            filters=JobFilter(),
            page=empty,
            error=str(e),
        ), 400
    page = job_page(
        filters,
        before=request.args.get("before", type=int),
        after=request.args.get("after", type=int),
        size=PAGE_SIZE,
    )
    return render_template(
        "async_request_dashboard/jobs.html", **context, filters=filters, page=page, error=None
    )


@blueprint.get("/jobs/<int:job_id>", endpoint="job")
def show_view(job_id: int) -> Any:
    """One job: worker, arguments, reply or error, attempts, timings and callback."""
    try:
        job = load_job(job_id)
    except JobNotFound:
        abort(404)
    params, params_cut = shown(json.dumps(job.params, indent=2, ensure_ascii=False))
    response, response_cut = shown(job.response or "")
    return render_template(
        "async_request_dashboard/job.html",
        job=job,
        params=params,
        params_cut=params_cut,
        response=response,
        response_cut=response_cut,
        error=error_message(job.response) if job.status is JobStatus.FAILED else None,
        result=stored_result(job),
        kept_headers=decode_headers(job.headers),
        timings=timings(job),
        can_retry=job.status is JobStatus.FAILED,
        can_cancel=not job.status.finished,
        deliveries=deliveries.decode(job.callback_deliveries),
        can_redeliver=bool(job.callback_url) and job.status.finished,
    )


@blueprint.get("/jobs/<int:job_id>/redeliver", endpoint="confirm_redeliver")
def confirm_redeliver_view(job_id: int) -> Any:
    """Ask before the callback is delivered again: the receiver gets one more POST."""
    try:
        job = load_job(job_id)
    except JobNotFound:
        abort(404)
    return render_template(
        "async_request_dashboard/confirm.html",
        title=f"Redeliver the callback of job {job_id}?",
        question=(
            f"The end of job {job_id} is POSTed once more to"
            f" {deliveries.host_of(job.callback_url)}, signed afresh, with the same webhook-id"
            " as before."
        ),
        action=url_for(".redeliver", job_id=job_id),
        fields={},
        button="Redeliver",
        back=url_for(".job", job_id=job_id),
    )


@blueprint.post("/jobs/<int:job_id>/redeliver", endpoint="redeliver")
def redeliver_view(job_id: int) -> Any:
    """Deliver the job's callback again, now (as ``flask async-request redeliver`` does)."""
    try:
        entry = redeliver(job_id)
    except JobNotFound:
        abort(404)
    except NoCallback as e:
        flash(str(e), "error")
    else:
        answer = entry.status_code if entry.status_code is not None else entry.error
        category = "message" if entry.outcome == deliveries.DELIVERED else "error"
        flash(f"Callback of job {job_id} redelivered: {entry.outcome} ({answer}).", category)
    return redirect(url_for(".job", job_id=job_id), 303)


@blueprint.post("/jobs/<int:job_id>/retry", endpoint="retry")
def retry_view(job_id: int) -> Any:
    """Run a failed job again (as ``flask async-request retry`` does)."""
    try:
        retry_job(job_id)
    except JobNotFound:
        abort(404)
    except JobNotFailed as e:
        flash(str(e), "error")
    except EnqueueError:
        flash(
            f"Job {job_id} is waiting to run again, but the broker refused its message;"
            " the sweeper sends it once the broker is back.",
            "error",
        )
    else:
        flash(f"Job {job_id} is waiting to run again.", "message")
    return redirect(url_for(".job", job_id=job_id), 303)


@blueprint.post("/jobs/<int:job_id>/cancel", endpoint="cancel")
def cancel_view(job_id: int) -> Any:
    """Cancel a waiting or running job (as ``DELETE`` on the status endpoint does)."""
    try:
        cancel_job(job_id)
    except JobNotFound:
        abort(404)
    except JobFinished as e:
        flash(f"{e} It cannot be cancelled.", "error")
    else:
        flash(f"Job {job_id} is cancelled.", "message")
    return redirect(url_for(".job", job_id=job_id), 303)
