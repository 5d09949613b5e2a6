"""What following a job's events does, decided with no I/O: :func:`event_steps`.

A job's events (see the docs' "Event streams") come as typed objects:
:class:`StatusEvent`, :class:`ProgressEvent` and, last, :class:`EndEvent` with
the job's :class:`~flask_async_request.client.JobResult`, read from a stream by
:class:`EventParser` a line at a time. :func:`event_steps` asks for what it
needs (open a GET, read a line, pause, hand an event over) and decides the
rest: when to reconnect, with which ``Last-Event-ID``, what a long poll's
answer means, what not to repeat. :mod:`flask_async_request.client_events`
performs the steps in a thread or in a coroutine. Like the clients, it needs
only the standard library.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass

from .client_polling import (
    DEFAULT_HEADER,
    POLL_GRACE,
    RETRIED,
    Answer,
    Headers,
    JobResult,
    Sleep,
    Unreachable,
    job_answer,
    result_of,
    retry_after_seconds,
)
from .exceptions import AsyncRequestError

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


#: What :func:`~.client_events.follow` yields.
JobEvent = StatusEvent | ProgressEvent | EndEvent


@dataclass(frozen=True)
class RawEvent:
    """One event of a stream as sent: its name, data, id and retry (milliseconds)."""

    event: str
    data: str
    id: str | None
    retry: int | None


class EventParser:
    """Reads an event stream a line at a time (WHATWG HTML, "Parsing an event stream").

    Comments (heartbeats) are skipped; a ``retry:`` alone comes as an event
    named ``""`` with no data, so a caller learns it.
    """

    def __init__(self) -> None:
        self._name = ""
        self._id: str | None = None
        self._retry: int | None = None
        self._data: list[str] = []

    def feed(self, raw: str) -> RawEvent | None:
        """Take one line; the event it completes, if it is the blank line that ends one."""
        line = raw.rstrip("\r\n")
        if not line:
            data, retry = self._data, self._retry
            name = self._name or "message" if data else ""
            self._name, self._data, self._retry = "", [], None
            if data or retry is not None:
                return RawEvent(name, "\n".join(data), self._id, retry)
            return None
        if line.startswith(":"):
            return None
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        elif field == "retry" and value.isdigit():
            self._retry = int(value)
        return None


def parse_events(lines: Iterable[str]) -> Iterator[RawEvent]:
    """The events of an event stream's lines: :class:`EventParser` over all of them."""
    parser = EventParser()
    for line in lines:
        event = parser.feed(line)
        if event is not None:
            yield event


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


@dataclass(frozen=True)
class OpenGet:
    """Open a GET of ``url`` with ``headers``, whose reads may wait ``idle`` seconds.

    Send back the answer's :class:`Opened` head, or
    :class:`~flask_async_request.client_polling.Unreachable`.
    """

    url: str
    headers: dict[str, str]
    idle: float


@dataclass(frozen=True)
class Opened:
    """The head of an answer just opened: its status and headers."""

    status: int
    headers: Headers


class NextLine:
    """Read the open answer's next line; send back ``None`` at its end, or ``Unreachable``."""


class ReadBody:
    """Read the open answer's whole body; send back its text."""


@dataclass(frozen=True)
class Emit:
    """Hand ``event`` to the caller."""

    event: JobEvent


#: What :func:`event_steps` asks of its driver. An open answer stays open until
#: the next step that opens another or pauses, or the steps' end.
EventStep = OpenGet | NextLine | ReadBody | Sleep | Emit
EventSteps = Generator[EventStep, "Opened | str | Unreachable | None", None]
_NEXT_LINE, _READ_BODY = NextLine(), ReadBody()


def event_steps(
    url: str,
    token: str,
    *,
    timeout: float = 300.0,
    header: str = DEFAULT_HEADER,
    headers: Mapping[str, str] | None = None,
    idle: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> EventSteps:
    """The steps that follow a job's events until its end, with no I/O of their own.

    Each stream is read as it arrives; one that ends before the job does (its
    longest duration, a dropped connection) is opened again after its
    ``retry:``, with ``Last-Event-ID``, which gives the current state. A JSON
    answer (the server cannot hold streams) is a long poll's: its status and
    progress are emitted, and it is asked again; a 503, 502 or 504, or a 429 (a
    limit on requests), after its ``Retry-After``. :func:`~.client_events.follow` and
    :func:`~.client_events.async_follow` perform them.

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

    def pause(seconds: float) -> Sleep:
        return Sleep(min(seconds, max(deadline - clock(), 0.0)))

    while True:
        if clock() >= deadline:
            raise TimeoutError(f"The job at {url} did not finish within {timeout} s.")
        sent = {header: f"Bearer {token}", "Accept": EVENT_STREAM}
        if last_id is not None:
            sent["Last-Event-ID"] = last_id
        sent.update(headers or {})
        opened = yield OpenGet(url, sent, idle + POLL_GRACE)
        if not isinstance(opened, Opened):
            yield pause(retry)
            continue
        media = (opened.headers.get("Content-Type") or "").split(";")[0].strip()
        if opened.status == 200 and media == EVENT_STREAM:
            parser = EventParser()
            while isinstance(line := (yield _NEXT_LINE), str):
                raw = parser.feed(line)
                if raw is None:
                    continue
                if raw.retry is not None:
                    retry = raw.retry / 1000
                if raw.id is not None:
                    last_id = raw.id
                event = _typed(raw, token, url)
                if isinstance(event, EndEvent):
                    yield Emit(event)
                    return
                if event is not None and seen.fresh(event):
                    yield Emit(event)
            yield pause(retry)
            continue
        if opened.status == 204:
            # The end was read before: nothing more comes.
            return
        text = yield _READ_BODY
        answer = Answer(opened.status, opened.headers, text if isinstance(text, str) else "")
        if answer.status in RETRIED:
            yield pause(retry_after_seconds(answer.headers.get("Retry-After"), retry))
            continue
        if answer.status >= 300:
            raise AsyncRequestError(f"Following {url} answered {answer.status}: {answer.text}")
        body = job_answer(url, answer)
        if answer.status == 200:
            yield Emit(EndEvent(result_of(body, token)))
            return
        # A long poll's answer: what changed of it, then ask again.
        for event in (
            StatusEvent(str(body.get("status"))),
            ProgressEvent(body.get("progress"), body.get("message")),
        ):
            if seen.fresh(event):
                yield Emit(event)
        if not answer.headers.get("Preference-Applied"):
            # Not held: wait as told before asking again.
            yield pause(retry_after_seconds(answer.headers.get("Retry-After"), 1.0))


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
