"""The Python clients' event streams, written once over any transport: :func:`follow`.

A job's events (see the docs' "Event streams") come as typed objects:
:class:`StatusEvent`, :class:`ProgressEvent` and, last, :class:`EndEvent` with
the job's :class:`~flask_async_request.client.JobResult`. :func:`follow`
reads them from a transport that opens a GET and hands back its lines, and
reconnects with ``Last-Event-ID`` after a stream's end, its ``retry:``
apart; a server that answers with JSON instead (a long poll, where it cannot
hold streams) is followed as a long poll. :func:`flask_async_request.client.events`
drives it with :mod:`urllib`, :func:`flask_async_request.client_httpx.events`
with httpx. Like the clients, it needs only the standard library.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from .client_polling import (
    DEFAULT_HEADER,
    POLL_GRACE,
    RETRIED,
    Answer,
    Headers,
    JobResult,
    Unreachable,
    job_answer,
    result_of,
    retry_after_seconds,
)
from .exceptions import AsyncRequestError

__all__ = [
    "Connection",
    "EndEvent",
    "JobEvent",
    "ProgressEvent",
    "StatusEvent",
    "follow",
    "parse_events",
]

#: The media type of an event stream.
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class StatusEvent:
    """The job's status changed: ``"waiting"`` or ``"processing"``, and its attempts so far."""

    status: str
    attempts: int = 0
    #: The event's id; ``None`` for one read from a long poll's answer.
    id: str | None = None


@dataclass(frozen=True)
class ProgressEvent:
    """The job reported progress: a fraction (``None``: none yet) and a message."""

    progress: float | None
    message: str | None = None
    id: str | None = None


@dataclass(frozen=True)
class EndEvent:
    """The job finished: its answer, as a poll of it gives."""

    result: JobResult
    id: str | None = None


#: What :func:`follow` yields.
JobEvent = StatusEvent | ProgressEvent | EndEvent


@dataclass(frozen=True)
class RawEvent:
    """One event of a stream as sent: its name, data, id and retry (milliseconds)."""

    event: str
    data: str
    id: str | None
    retry: int | None


def parse_events(lines: Iterable[str]) -> Iterator[RawEvent]:
    """The events of an event stream's lines (WHATWG HTML, "Parsing an event stream").

    Comments (heartbeats) are skipped; a ``retry:`` alone comes as an event
    named ``""`` with no data, so a caller learns it.
    """
    name, event_id, retry = "", None, None
    data: list[str] = []
    for raw in lines:
        line = raw.rstrip("\r\n")
        if not line:
            if data or retry is not None:
                # A retry: alone comes as an event named "", with no data.
                yield RawEvent(name or "message" if data else "", "\n".join(data), event_id, retry)
            name, data, retry = "", [], None
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)
        elif field == "id" and "\0" not in value:
            event_id = value
        elif field == "retry" and value.isdigit():
            retry = int(value)


class Connection(Protocol):
    """An answer to a GET, open: what :func:`follow` reads of it."""

    @property
    def status(self) -> int:
        """The answer's status code."""
        ...

    @property
    def headers(self) -> Headers:
        """The answer's headers."""
        ...

    def lines(self) -> Iterable[str]:
        """The body's lines, as they arrive."""
        ...

    def text(self) -> str:
        """The whole body."""
        ...

    def close(self) -> None: ...


#: Opens a GET of ``url`` with ``headers``, which may take ``timeout`` seconds between reads.
Open = Callable[[str, dict[str, str], float], Connection]


def _typed(raw: RawEvent, token: str, url: str) -> JobEvent | None:
    try:
        data = json.loads(raw.data)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if raw.event == "status":
        return StatusEvent(str(data.get("status")), int(data.get("attempts") or 0), raw.id)
    if raw.event == "progress":
        return ProgressEvent(data.get("progress"), data.get("message"), raw.id)
    if raw.event == "end":
        return EndEvent(result_of(data, token), raw.id)
    if raw.event == "gone":
        raise AsyncRequestError(f"The job at {url} no longer exists.")
    return None


def follow(
    open_get: Open,
    url: str,
    token: str,
    *,
    timeout: float = 300.0,
    header: str = DEFAULT_HEADER,
    headers: Mapping[str, str] | None = None,
    idle: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[JobEvent]:
    """The job's events until its end, over the transport ``open_get``.

    Each stream is read as it arrives; one that ends before the job does (its
    longest duration, a dropped connection) is opened again after its
    ``retry:``, with ``Last-Event-ID``, which gives the current state. A JSON
    answer (the server cannot hold streams) is a long poll's: its status and
    progress are yielded, and it is asked again; a 503, 502 or 504, or a 429 (a
    limit on requests), after its ``Retry-After``.

    :param idle: seconds a stream may stay silent (heartbeats included) before
        it counts as dropped.
    :raises TimeoutError: the job did not finish within ``timeout`` seconds.
    :raises AsyncRequestError: the server refused the token (400), knows no
        such job (404), or answered another error.
    """
    deadline = clock() + timeout
    last_id: str | None = None
    retry = 1.0
    seen = _Seen()
    while True:
        if clock() >= deadline:
            raise TimeoutError(f"The job at {url} did not finish within {timeout} s.")
        sent = {header: f"Bearer {token}", "Accept": EVENT_STREAM}
        if last_id is not None:
            sent["Last-Event-ID"] = last_id
        sent.update(headers or {})
        try:
            connection = open_get(url, sent, idle + POLL_GRACE)
        except Unreachable:
            sleep(min(retry, max(deadline - clock(), 0.0)))
            continue
        try:
            media = (connection.headers.get("Content-Type") or "").split(";")[0].strip()
            if connection.status == 200 and media == EVENT_STREAM:
                try:
                    for raw in parse_events(connection.lines()):
                        if raw.retry is not None:
                            retry = raw.retry / 1000
                        if raw.id is not None:
                            last_id = raw.id
                        event = _typed(raw, token, url)
                        if isinstance(event, EndEvent):
                            yield event
                            return
                        if event is not None and seen.fresh(event):
                            yield event
                except (Unreachable, OSError):
                    pass
                sleep(min(retry, max(deadline - clock(), 0.0)))
                continue
            if connection.status == 204:
                # The end was read before: nothing more comes.
                return
            answer = Answer(connection.status, connection.headers, connection.text())
        finally:
            connection.close()
        if answer.status in RETRIED:
            sleep(
                min(
                    retry_after_seconds(answer.headers.get("Retry-After"), retry),
                    deadline - clock(),
                )
            )
            continue
        if answer.status >= 300:
            raise AsyncRequestError(f"Following {url} answered {answer.status}: {answer.text}")
        body = job_answer(url, answer)
        if answer.status == 200:
            yield EndEvent(result_of(body, token))
            return
        # A long poll's answer: what changed of it, then ask again.
        for event in (
            StatusEvent(str(body.get("status"))),
            ProgressEvent(body.get("progress"), body.get("message")),
        ):
            if seen.fresh(event):
                yield event
        if not answer.headers.get("Preference-Applied"):
            # Not held: wait as told before asking again.
            sleep(
                min(retry_after_seconds(answer.headers.get("Retry-After"), 1.0), deadline - clock())
            )


class _Seen:
    """What was yielded last, so a resumed stream's restated state is not yielded twice."""

    def __init__(self) -> None:
        self.status: str | None = None
        self.attempts = 0
        self.progress: tuple[float | None, str | None] = (None, None)

    def fresh(self, event: StatusEvent | ProgressEvent) -> bool:
        """Whether ``event`` says something new; it is remembered."""
        if isinstance(event, StatusEvent):
            # A long poll's answer carries no attempts (0): its status alone tells.
            fresh = event.status != self.status or event.attempts > self.attempts
            self.status, self.attempts = event.status, max(self.attempts, event.attempts)
            return fresh
        value = (event.progress, event.message)
        fresh = value != self.progress
        self.progress = value
        return fresh
