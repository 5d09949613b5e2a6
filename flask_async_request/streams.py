"""Server-sent events on a job's url: each change of the job pushed as it happens.

A ``GET`` of the status url with ``Accept: text/event-stream`` is answered with
an event stream (WHATWG HTML, "Server-sent events") that holds no database
connection while it waits: it watches the job through the process's
:class:`~flask_async_request.waiting.Waiters`, as long polls wait, and reads the
row again only when woken. The events:

* ``status``: ``{"status": "waiting"|"processing", "attempts": N}``, first and
  at each change (a claim, a retry);
* ``progress``: ``{"progress": 0.4, "message": "..."}``, at each new value;
* ``end``: exactly the JSON body a poll of the finished job answers; then the
  stream ends. Its id is :data:`END_ID`: a client that reconnects with that
  ``Last-Event-ID`` is answered ``204 No Content``, which stops an
  ``EventSource``, and never reads the end twice;
* ``gone``: the job was purged meanwhile (the body of a poll's 404).

Every other event's id is a number, one more than the last; a client that
reconnects with ``Last-Event-ID`` gets the job's current state (its status and
latest progress, all that still matters) and the events after it. A comment is
sent after ``ASYNC_REQUEST_STREAM_HEARTBEAT`` of silence, and a stream ends
after ``ASYNC_REQUEST_STREAM_MAX_DURATION`` with a ``retry:`` hint.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Hashable, Iterator, Mapping
from functools import partial
from typing import Any, NamedTuple

import sqlalchemy.exc
from flask import Response, request, stream_with_context

from .envelope import UNAVAILABLE_RETRY_AFTER
from .exceptions import DatabaseUnavailable, InvalidJobRow
from .models import JobStatus
from .replies import PROGRESS_DIGITS
from .shared_reads import Read
from .state import get_state
from .statements import JobReply
from .values import finite
from .waiting import Waiters

logger = logging.getLogger("flask_async_request")

#: The media type of an event stream.
EVENT_STREAM = "text/event-stream"
#: The id of a job's ``end`` event.
END_ID = "end"
#: The data of a ``gone`` event.
_GONE = json.dumps({"errors": [{"message": "Job not found"}]}, separators=(",", ":"))
#: A claim is not announced: a stream of a waiting job reads it again this often (seconds).
WAITING_REREAD = 1.0

__all__ = [
    "END_ID",
    "EVENT_STREAM",
    "WAITING_REREAD",
    "can_hold",
    "event_stream",
    "next_event_id",
    "stream",
    "wants_stream",
]


def wants_stream() -> bool:
    """Whether the request prefers an event stream to JSON (its ``Accept``)."""
    best = request.accept_mimetypes.best_match(["application/json", EVENT_STREAM])
    return best == EVENT_STREAM


def event_stream(job_id: int, uid: str, final: Callable[[JobReply], dict[str, Any]]) -> Response:
    """The response streaming job ``job_id``'s events, in this request's context.

    :param final: the body of a poll of the finished job (see :func:`stream`).
    """
    state = get_state()
    settings, store = state.settings, state.store()
    events = stream(
        waiters=store.waiters(),
        job_id=job_id,
        uid=uid,
        read=lambda since: store.fresh_reads.take(job_id, since),
        final=final,
        # The body of the end names the request's url (its links): shared by the same url's streams.
        final_key=("end", request.url),
        first_id=next_event_id(request.headers.get("Last-Event-ID")),
        heartbeat=settings.stream_heartbeat.total_seconds(),
        max_duration=settings.stream_max_duration.total_seconds(),
        retry_ms=settings.retry_after * 1000 or 1000,
        # Where claims wake no one, a waiting job is read again now and then.
        reread_waiting=WAITING_REREAD if store.listen else None,
    )
    # Proxies are asked not to buffer it (nginx reads X-Accel-Buffering).
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Vary": "Accept"}
    return Response(stream_with_context(events), mimetype=EVENT_STREAM, headers=headers)


def can_hold(environ: Mapping[str, Any], setting: bool | str) -> bool:
    """Whether this request may be held open as a stream (``ASYNC_REQUEST_STREAMS``).

    ``"auto"``: where holding it does not hold a worker: a threaded server
    (``wsgi.multithread``), or a process whose threads gevent or eventlet
    patched (their workers serve each request in a greenlet). A sync worker,
    which serves one request at a time, says neither.
    """
    if setting != "auto":
        return bool(setting)
    return bool(environ.get("wsgi.multithread")) or _green()


def _green() -> bool:
    """Whether gevent or eventlet patched the threads of this process."""
    gevent = sys.modules.get("gevent.monkey")
    if gevent is not None and gevent.is_module_patched("threading"):
        return True
    patcher = sys.modules.get("eventlet.patcher")
    return bool(patcher is not None and patcher.is_monkey_patched("thread"))


def next_event_id(last_event_id: str | None) -> int:
    """The id of the first event after ``Last-Event-ID``: 1, or one more than a number sent."""
    if (
        last_event_id is not None
        and last_event_id.isascii()
        and last_event_id.isdigit()
        and len(last_event_id) < 19
    ):
        return int(last_event_id) + 1
    return 1


def _data(data: object) -> str:
    return json.dumps(data, separators=(",", ":"))


def _event(name: str, payload: str, event_id: str) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {payload}\n\n"


class _Shown(NamedTuple):
    """What a stream shows of one read of its job, made once for every stream taking that read."""

    status: tuple[JobStatus, int]
    progress: tuple[float | None, str | None]
    #: The ``status`` and ``progress`` events' data, encoded.
    status_data: str
    progress_data: str


def _shown(reply: JobReply) -> _Shown:
    progress = finite(reply.progress)
    value = (None if progress is None else round(progress, PROGRESS_DIGITS)), reply.message
    return _Shown(
        (reply.status, reply.attempts),
        value,
        _data({"status": reply.status.value, "attempts": reply.attempts}),
        _data({"progress": value[0], "message": value[1]}),
    )


def _final_data(final: Callable[[JobReply], dict[str, Any]], reply: JobReply) -> str:
    return _data(final(reply))


def stream(
    *,
    waiters: Waiters,
    job_id: int,
    uid: str,
    read: Callable[[float], Read[JobReply | None]],
    final: Callable[[JobReply], dict[str, Any]],
    final_key: Hashable = END_ID,
    first_id: int,
    heartbeat: float,
    max_duration: float,
    retry_ms: int,
    reread_waiting: float | None = WAITING_REREAD,
    clock: Callable[[], float] = time.monotonic,
    pause: Callable[[float], None] | None = None,
) -> Iterator[str]:
    """The text of job ``job_id``'s event stream, event by event, until its end or the time is up.

    :param read: a read of the job's reply columns (``None``: gone) begun no
        earlier than the ``time.monotonic`` it is given, which the streams of
        the same job may share (see :class:`.shared_reads.FreshReads`). Called
        once the stream watches the job, then once per wake; a database out of
        reach ends the stream with a ``retry:`` hint.
    :param final: the body of a poll of the finished job.
    :param final_key: what ``final`` depends on besides the reply: the streams
        of one read with the same key share one encoding of it.
    :param first_id: the id of the first event (see :func:`next_event_id`).
    :param reread_waiting: read a waiting job again this often, where the claim
        wakes no one (PostgreSQL); ``None``: only when woken.
    :param pause: called with 0 once the end is sent, before the stream ends;
        ``None``: ``time.sleep`` as it is then (gevent's once it patched it),
        which lets the other threads or greenlets run.
    """
    deadline = clock() + max_duration
    event_id = first_id
    yield f"retry: {retry_ms}\n\n"
    last_sent = clock()
    shown_status: tuple[JobStatus, int] | None = None
    shown_progress: tuple[float | None, str | None] = (None, None)
    with waiters.watching(job_id) as woken:
        while True:
            woken.clear()
            # A read begun since the last wake sees what it announced; the first
            # read, and one made without a wake, must begin now.
            since = woken.at if woken.at else clock()
            woken.at = 0.0
            try:
                taken = read(since)
            except (
                sqlalchemy.exc.DBAPIError,
                sqlalchemy.exc.TimeoutError,  # no connection of the pool came free
                DatabaseUnavailable,
                InvalidJobRow,
            ):
                logger.warning("An event stream could not read job %s; ending it.", job_id)
                yield f"retry: {UNAVAILABLE_RETRY_AFTER * 1000}\n\n"
                return
            reply = taken.reply
            if reply is None or reply.uid != uid:
                yield _event("gone", _GONE, END_ID)
                return
            # Every stream that takes this read shows the same: made once, for all of them.
            shown = taken.shared(_Shown, partial(_shown, reply))
            if reply.status.finished:
                if shown_status is not None and shown.progress != shown_progress:
                    # The last report, stored just before the end: it is still told.
                    yield _event("progress", shown.progress_data, str(event_id))
                end = taken.shared(final_key, partial(_final_data, final, reply))
                yield _event("end", end, END_ID)
                # An end wakes every stream of its job at once, and closing a stream
                # (its request's teardown, its socket) costs as much again as sending
                # its end: each lets the others send theirs before it closes, so the
                # last end is not sent behind every close before it.
                (pause or time.sleep)(0)
                return
            if shown.status != shown_status:
                yield _event("status", shown.status_data, str(event_id))
                event_id += 1
                shown_status = shown.status
                last_sent = clock()
            if shown.progress != shown_progress:
                yield _event("progress", shown.progress_data, str(event_id))
                event_id += 1
                shown_progress = shown.progress
                last_sent = clock()
            reread = clock() + reread_waiting if reread_waiting is not None else None
            if reply.status is not JobStatus.WAITING:
                reread = None
            while True:
                now = clock()
                if now >= deadline:
                    yield f": the stream's time is up; reconnect\nretry: {retry_ms}\n\n"
                    return
                wake_at = min(deadline, last_sent + heartbeat)
                if reread is not None:
                    wake_at = min(wake_at, reread)
                if waiters.sleep(woken, max(wake_at - now, 0.0)):
                    break
                now = clock()
                if now >= last_sent + heartbeat:
                    yield ": keep-alive\n\n"
                    last_sent = now
                if reread is not None and now >= reread:
                    break
