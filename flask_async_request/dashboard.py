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
import math
import secrets
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
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

from . import config
from .config import parse_duration
from .exceptions import EnqueueError, JobFinished, JobNotFailed, JobNotFound
from .lifecycle import error_message
from .maintenance import retry_job
from .models import Job, JobStatus, as_utc, unstorable, utcnow
from .state import EXTENSION_KEY, get_state
from .web import cancel_job

logger = logging.getLogger("flask_async_request")

#: Where the dashboard's state is kept in ``app.extensions``.
DASHBOARD_KEY = "async_request_dashboard"
DEFAULT_URL_PREFIX = "/async-request/dashboard"
#: Jobs on one page of the list.
PAGE_SIZE = 50
#: Characters of a reply or of arguments shown on a job's page; the rest is cut.
SHOWN_CHARS = 100_000

#: Answers whether the current request may use the dashboard (it reads ``flask.request``,
#: ``flask_login.current_user`` and so on). Only ``True`` opens it.
Authorize = Callable[[], bool]

blueprint = Blueprint("async_request_dashboard", __name__, template_folder="templates")

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
        "duration": format_duration,
        "percent": format_percent,
        "statuses": list(JobStatus),
    }


def format_moment(moment: datetime | None) -> str:
    """A time as ``2024-05-01 12:00:00 UTC``, or ``-``."""
    return "-" if moment is None else as_utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_iso(moment: datetime | None) -> str:
    """A time in ISO 8601, in UTC, or an empty string."""
    return "" if moment is None else as_utc(moment).isoformat()


def format_percent(progress: float | None) -> str:
    """Progress from 0 to 1 as ``42%``; ``-`` for none (or a value edited into NaN)."""
    if progress is None or not math.isfinite(progress):
        return "-"
    return f"{progress * 100:.0f}%"


def format_duration(delta: timedelta | None) -> str:
    """A short duration: 350 ms, 12.3 s, 5m07s, 3h02m, 2d04h; ``-`` for none."""
    if delta is None:
        return "-"
    seconds = max(delta.total_seconds(), 0.0)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    return config.format_duration(delta)


# Reading jobs ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobFilter:
    """Which jobs a list shows; empty fields do not filter."""

    status: JobStatus | None = None
    #: The worker's dotted path, exactly.
    worker: str | None = None
    #: Only jobs created longer ago than this.
    older_than: timedelta | None = None
    #: Only jobs created within this.
    newer_than: timedelta | None = None

    @classmethod
    def from_args(cls, args: Mapping[str, str]) -> JobFilter:
        """The filter a list url asks for.

        :raises ValueError: for an unknown status, a duration that does not parse, or
            a worker with text no database takes in a query (a NUL character or a
            lone surrogate).
        """
        status = args.get("status") or None
        if status is not None and status not in {s.value for s in JobStatus}:
            raise ValueError(
                f"status is {status!r}; expected one of {', '.join(s.value for s in JobStatus)}."
            )
        older, newer = args.get("older_than") or None, args.get("newer_than") or None
        worker = (args.get("worker") or "").strip() or None
        reason = None if worker is None else unstorable(worker)
        if reason is not None:
            raise ValueError(f"worker cannot be searched for: {reason}.")
        return cls(
            status=None if status is None else JobStatus(status),
            worker=worker,
            older_than=None if older is None else parse_duration(older),
            newer_than=None if newer is None else parse_duration(newer),
        )


@dataclasses.dataclass(frozen=True)
class ListedJob:
    """What a list shows of a job: no arguments or reply, which may be large."""

    id: int
    status: JobStatus
    worker: str
    status_code: int | None
    attempts: int
    progress: float | None
    owner: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


_LISTED = sa.select(*(getattr(Job, field.name) for field in dataclasses.fields(ListedJob)))


@dataclasses.dataclass(frozen=True)
class JobPage:
    """One page of a list, newest first, with where the next pages start."""

    jobs: list[ListedJob]
    #: Pass as ``before`` for the next, older page; ``None`` on the last page.
    older: int | None
    #: Pass as ``after`` for the previous, newer page; ``None`` on the first page.
    newer: int | None


def job_page(
    filters: JobFilter,
    *,
    before: int | None = None,
    after: int | None = None,
    size: int = PAGE_SIZE,
) -> JobPage:
    """A page of jobs that match ``filters``, newest (highest id) first.

    Keyset paging: ``before`` gives the page of jobs just older than that id,
    ``after`` the page just newer. Each page is one range scan of the primary key,
    ``(status, id)`` or ``(worker, id)``, with no OFFSET and no sort; an age filter
    first turns into an id bound with one lookup in the ``created_at`` index.
    """
    session = get_state().db.session
    conditions = _conditions(session, filters)
    if conditions is None:
        return JobPage([], None, None)
    if after is not None:
        query = _LISTED.where(*conditions, Job.id > after).order_by(Job.id.asc()).limit(size + 1)
        jobs = [ListedJob(*row) for row in session.execute(query)]
        if len(jobs) > size:
            jobs = jobs[:size][::-1]
            return JobPage(jobs, older=jobs[-1].id, newer=jobs[0].id)
        # Nothing newer beyond these: the newest page, full.
        before = None
    query = _LISTED.where(*conditions).order_by(Job.id.desc()).limit(size + 1)
    if before is not None:
        query = query.where(Job.id < before)
    jobs = [ListedJob(*row) for row in session.execute(query)]
    older = jobs[size - 1].id if len(jobs) > size else None
    jobs = jobs[:size]
    newer = jobs[0].id if before is not None and jobs else None
    return JobPage(jobs, older=older, newer=newer)


def _conditions(session: Any, filters: JobFilter) -> list[sa.ColumnElement[bool]] | None:
    """The WHERE clauses of ``filters``; ``None`` when no job can match."""
    conditions: list[sa.ColumnElement[bool]] = []
    if filters.status is not None:
        conditions.append(Job.status == filters.status)
    if filters.worker is not None:
        conditions.append(Job.worker == filters.worker)
    now = utcnow()
    # An age becomes a bound on id, found in the created_at index: ids grow with
    # creation, so the page stays one range scan by id. Jobs created within the
    # same instant by different processes may fall on either side of the bound.
    if filters.newer_than is not None:
        first = session.execute(
            sa.select(Job.id)
            .where(Job.created_at >= now - filters.newer_than)
            .order_by(Job.created_at.asc())
            .limit(1)
        ).scalar()
        if first is None:
            return None
        conditions.append(Job.id >= first)
    if filters.older_than is not None:
        last = session.execute(
            sa.select(Job.id)
            .where(Job.created_at < now - filters.older_than)
            .order_by(Job.created_at.desc())
            .limit(1)
        ).scalar()
        if last is None:
            return None
        conditions.append(Job.id <= last)
    return conditions


def load_job(job_id: int) -> Job:
    """Job ``job_id`` as stored now, read by its primary key.

    :raises JobNotFound: there is no such job.
    """
    job = (
        get_state()
        .db.session.execute(
            # Read afresh even if the session holds the job from earlier in the request.
            sa.select(Job).where(Job.id == job_id).execution_options(populate_existing=True)
        )
        .scalar()
    )
    if job is None:
        raise JobNotFound(job_id)
    return job


@dataclasses.dataclass(frozen=True)
class Timings:
    """How long a job waited for a worker and how long it ran; ``so_far`` while it goes on."""

    waited: timedelta | None
    ran: timedelta | None
    waiting_so_far: bool
    running_so_far: bool


def timings(job: Job, now: datetime | None = None) -> Timings:
    """Waited: from creation to the (last) start, or to the end if it never started.

    Ran: from the (last) start to the end. A waiting or running job is measured up
    to ``now``; a waiting job that ran before (a retry's backoff) counts as
    waiting since its creation.
    """
    now = now or utcnow()
    created = as_utc(job.created_at)
    started = None if job.started_at is None else as_utc(job.started_at)
    finished = None if job.finished_at is None else as_utc(job.finished_at)
    if job.status is JobStatus.WAITING:
        return Timings(now - created, None, waiting_so_far=True, running_so_far=False)
    if job.status is JobStatus.PROCESSING and started is not None:
        return Timings(started - created, now - started, waiting_so_far=False, running_so_far=True)
    waited_until = started or finished
    return Timings(
        waited=None if waited_until is None else waited_until - created,
        ran=None if started is None or finished is None else finished - started,
        waiting_so_far=False,
        running_so_far=False,
    )


def _shown(text: str) -> tuple[str, int]:
    """``text`` cut to :data:`SHOWN_CHARS`, and how many characters were cut."""
    if len(text) <= SHOWN_CHARS:
        return text, 0
    return text[:SHOWN_CHARS], len(text) - SHOWN_CHARS


# The views ------------------------------------------------------------------------------


#: The query arguments of a list's filters, kept as typed in links to other pages.
_FILTER_ARGS = ("status", "worker", "older_than", "newer_than")


@blueprint.get("/", endpoint="jobs")
def list_view() -> Any:
    """Jobs newest first, filtered and paged."""
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

    context: dict[str, Any] = {"query": query, "list_url": list_url, "since": since, "ran": ran}
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
    params, params_cut = _shown(json.dumps(job.params, indent=2, ensure_ascii=False))
    response, response_cut = _shown(job.response or "")
    return render_template(
        "async_request_dashboard/job.html",
        job=job,
        params=params,
        params_cut=params_cut,
        response=response,
        response_cut=response_cut,
        error=error_message(job.response) if job.status is JobStatus.FAILED else None,
        timings=timings(job),
        can_retry=job.status is JobStatus.FAILED,
        can_cancel=not job.status.finished,
    )


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
