"""The Python clients' event streams, over any transport: :func:`follow` and :func:`async_follow`.

A job's events (see the docs' "Event streams") come as typed objects:
:class:`~.client_event_steps.StatusEvent`, :class:`~.client_event_steps.ProgressEvent`
and, last, :class:`~.client_event_steps.EndEvent` with the job's
:class:`~flask_async_request.client.JobResult`. What to do when
(reconnect with ``Last-Event-ID`` after a stream's end, its ``retry:`` apart;
follow a server that answers with JSON, where it cannot hold streams, as a long
poll) is decided once, with no I/O, by
:func:`~flask_async_request.client_event_steps.event_steps`; :func:`follow`
performs its steps over a transport that opens a GET and hands back its lines,
in a thread, and :func:`async_follow` in a coroutine.
:func:`flask_async_request.client.events` drives it with :mod:`urllib`,
:func:`flask_async_request.client_httpx.events` and
:func:`~flask_async_request.client_httpx.async_events` with httpx. The events,
the parser and the steps are named here too. Like the clients, it needs only
the standard library.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from typing import Protocol

from .client_event_steps import (
    EVENT_STREAM,
    Emit,
    EndEvent,
    EventParser,
    EventStep,
    JobEvent,
    NextLine,
    Opened,
    OpenGet,
    ProgressEvent,
    RawEvent,
    ReadBody,
    StatusEvent,
    event_steps,
    parse_events,
)
from .client_polling import DEFAULT_HEADER, Headers, Sleep, Unreachable

__all__ = [
    "EVENT_STREAM",
    "AsyncConnection",
    "Connection",
    "Emit",
    "EndEvent",
    "EventParser",
    "EventStep",
    "JobEvent",
    "NextLine",
    "OpenGet",
    "Opened",
    "ProgressEvent",
    "RawEvent",
    "ReadBody",
    "StatusEvent",
    "async_follow",
    "event_steps",
    "follow",
    "parse_events",
]


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
    """The job's events until its end, over the transport ``open_get``, in this thread.

    Performs :func:`~.client_event_steps.event_steps` (whose arguments it takes) with ``open_get``
    and ``sleep``; the transport's
    :class:`~flask_async_request.client_polling.Unreachable` and ``OSError`` while a
    stream is read count as a dropped stream.
    """
    steps = event_steps(
        url, token, timeout=timeout, header=header, headers=headers, idle=idle, clock=clock
    )
    connection: Connection | None = None
    lines: Iterator[str] = iter(())
    sent: Opened | str | Unreachable | None = None
    try:
        while True:
            try:
                step = steps.send(sent)
            except StopIteration:
                return
            sent = None
            if connection is not None and isinstance(step, (OpenGet, Sleep)):
                connection.close()
                connection = None
            if isinstance(step, Emit):
                yield step.event
            elif isinstance(step, Sleep):
                sleep(step.seconds)
            elif isinstance(step, OpenGet):
                try:
                    connection = open_get(step.url, step.headers, step.idle)
                except Unreachable as e:
                    sent = e
                    continue
                lines = iter(connection.lines())
                sent = Opened(connection.status, connection.headers)
            elif isinstance(step, NextLine):
                try:
                    sent = next(lines, None)
                except (Unreachable, OSError) as e:
                    sent = e if isinstance(e, Unreachable) else Unreachable(str(e))
            elif connection is not None:
                sent = connection.text()
    finally:
        steps.close()
        if connection is not None:
            connection.close()


class AsyncConnection(Protocol):
    """An answer to a GET, open, read in a coroutine: what :func:`async_follow` reads of it."""

    @property
    def status(self) -> int:
        """The answer's status code."""
        ...

    @property
    def headers(self) -> Headers:
        """The answer's headers."""
        ...

    def lines(self) -> AsyncIterator[str]:
        """The body's lines, as they arrive."""
        ...

    async def text(self) -> str:
        """The whole body."""
        ...

    async def close(self) -> None: ...


#: Opens a GET of ``url`` with ``headers`` in a coroutine, reads waiting ``timeout`` seconds.
AsyncOpen = Callable[[str, dict[str, str], float], Awaitable[AsyncConnection]]


async def async_follow(
    open_get: AsyncOpen,
    url: str,
    token: str,
    *,
    timeout: float = 300.0,
    header: str = DEFAULT_HEADER,
    headers: Mapping[str, str] | None = None,
    idle: float = 60.0,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[JobEvent]:
    """As :func:`follow`, in a coroutine: reads and pauses leave the event loop free."""
    steps = event_steps(
        url, token, timeout=timeout, header=header, headers=headers, idle=idle, clock=clock
    )
    connection: AsyncConnection | None = None
    lines: AsyncIterator[str] | None = None
    sent: Opened | str | Unreachable | None = None
    try:
        while True:
            try:
                step = steps.send(sent)
            except StopIteration:
                return
            sent = None
            if connection is not None and isinstance(step, (OpenGet, Sleep)):
                await connection.close()
                connection = None
            if isinstance(step, Emit):
                yield step.event
            elif isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
            elif isinstance(step, OpenGet):
                try:
                    connection = await open_get(step.url, step.headers, step.idle)
                except Unreachable as e:
                    sent = e
                    continue
                lines = connection.lines()
                sent = Opened(connection.status, connection.headers)
            elif isinstance(step, NextLine):
                try:
                    sent = await anext(lines) if lines is not None else None
                except StopAsyncIteration:
                    sent = None
                except (Unreachable, OSError) as e:
                    sent = e if isinstance(e, Unreachable) else Unreachable(str(e))
            elif connection is not None:
                sent = await connection.text()
    finally:
        steps.close()
        if connection is not None:
            await connection.close()
