"""The Python client on httpx, in threads or in asyncio: ``pip install flask-async-request[httpx]``.

The polling is :mod:`flask_async_request.client_polling`'s (long polls, ``Retry-After``,
retries of 503 and of failed connections, the deadline); the requests are
httpx's, made with the client given, so its cookies, auth, proxies, HTTP/2 and
transports apply::

    import httpx
    from flask_async_request.client_httpx import async_wait_for, wait_for

    with httpx.Client(base_url="https://reports.internal", cookies=cookies) as client:
        result = wait_for(client, client.post("/reports", json={"month": 3}))

    async with httpx.AsyncClient(http2=True) as client:
        started = await client.post("https://reports.internal/reports", json={"month": 3})
        result = await async_wait_for(client, started)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import httpx

from .client_events import AsyncConnection, Connection, JobEvent, async_follow, follow
from .client_polling import (
    DEFAULT_HEADER,
    Answer,
    Destination,
    Get,
    JobResult,
    Receiver,
    Sleep,
    Steps,
    Unreachable,
    drive,
    poll_steps,
    result_request,
    target,
)
from .exceptions import AsyncRequestError

__all__ = [
    "JobResult",
    "async_download",
    "async_events",
    "async_wait_for",
    "download",
    "events",
    "wait_for",
]

#: The errors of a poll that got no answer, worth trying again: not those of a
#: request that can never be sent (a bad url, an unsupported scheme).
RETRIED = (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError, httpx.ProxyError)


def _timeout(client: httpx.Client | httpx.AsyncClient, step: Get) -> httpx.Timeout:
    """The client's own timeouts, with a read timeout long enough for the held poll."""
    own = client.timeout
    read = None if own.read is None else max(own.read, step.timeout)
    return httpx.Timeout(connect=own.connect, read=read, write=own.write, pool=own.pool)


def _options(client: httpx.Client | httpx.AsyncClient, step: Get) -> dict[str, Any]:
    # A redirect is an answer, even for a client that follows them: following it
    # would take the token elsewhere.
    return {"headers": step.headers, "timeout": _timeout(client, step), "follow_redirects": False}


def _answer_of(response: httpx.Response) -> Answer:
    """What the polling steps need of an httpx response."""
    return Answer(response.status_code, response.headers, response.text)


def _steps(
    response: Any,
    url: str | None,
    token: str | None,
    options: dict[str, Any],
) -> Steps:
    url, token = target(response, url, token)
    return poll_steps(url, token, **options)


def wait_for(
    client: httpx.Client,
    response: Any = None,
    *,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 300.0,
    header: str = DEFAULT_HEADER,
    long_poll: int = 20,
    on_progress: Callable[[float | None, str | None], None] | None = None,
    headers: Mapping[str, str] | None = None,
    max_backoff: float = 30.0,
) -> JobResult:
    """Wait with ``client`` until a job finishes and return its answer.

    The arguments after ``client`` are those of
    :func:`flask_async_request.client.wait_for`; ``url`` may be relative to the
    client's ``base_url``.

    :raises TimeoutError: the job did not finish within ``timeout`` seconds.
    :raises AsyncRequestError: the server refused the token (400), knows no such
        job (404), answered another error, or stayed out of reach.
    """

    def get(step: Get) -> Answer:
        try:
            return _answer_of(client.get(step.url, **_options(client, step)))
        except RETRIED as e:
            raise Unreachable(str(e) or type(e).__name__) from e

    options = {
        "timeout": timeout,
        "header": header,
        "long_poll": long_poll,
        "on_progress": on_progress,
        "headers": headers,
        "max_backoff": max_backoff,
    }
    return drive(_steps(response, url, token, options), get)


class _HttpxConnection:
    """An httpx response, streamed, as :func:`.client_events.follow` reads it."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = response.headers

    def lines(self) -> Iterator[str]:
        try:
            yield from self._response.iter_lines()
        except RETRIED as e:
            raise Unreachable(str(e) or type(e).__name__) from e

    def text(self) -> str:
        self._response.read()
        return self._response.text

    def close(self) -> None:
        self._response.close()


def events(
    client: httpx.Client,
    response: Any = None,
    *,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 300.0,
    header: str = DEFAULT_HEADER,
    headers: Mapping[str, str] | None = None,
) -> Iterator[JobEvent]:
    """The job's events with ``client``, until its end; see :func:`.client.events`."""

    def open_get(target_url: str, sent: dict[str, str], idle: float) -> Connection:
        wait = _stream_timeout(client, idle)
        request = client.build_request("GET", target_url, headers=sent, timeout=wait)
        try:
            return _HttpxConnection(client.send(request, stream=True, follow_redirects=False))
        except RETRIED as e:
            raise Unreachable(str(e) or type(e).__name__) from e

    url, token = target(response, url, token)
    return follow(open_get, url, token, timeout=timeout, header=header, headers=headers)


class _AsyncHttpxConnection:
    """An asyncio httpx response, streamed, as :func:`.client_events.async_follow` reads it."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self.status = response.status_code
        self.headers = response.headers

    async def lines(self) -> AsyncIterator[str]:
        try:
            async for line in self._response.aiter_lines():
                yield line
        except RETRIED as e:
            raise Unreachable(str(e) or type(e).__name__) from e

    async def text(self) -> str:
        await self._response.aread()
        return self._response.text

    async def close(self) -> None:
        await self._response.aclose()


def _stream_timeout(client: httpx.Client | httpx.AsyncClient, idle: float) -> httpx.Timeout:
    """The client's own timeouts, with reads that may wait ``idle`` seconds (heartbeats apart)."""
    own = client.timeout
    return httpx.Timeout(connect=own.connect, read=idle, write=own.write, pool=own.pool)


def async_events(
    client: httpx.AsyncClient,
    response: Any = None,
    *,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 300.0,
    header: str = DEFAULT_HEADER,
    headers: Mapping[str, str] | None = None,
) -> AsyncIterator[JobEvent]:
    """The job's events with the asyncio ``client``, until its end; see :func:`.client.events`.

    As :func:`events`, in a coroutine::

        async with httpx.AsyncClient(base_url="https://reports.internal") as client:
            async for event in async_events(client, await client.post("/reports")):
                if isinstance(event, ProgressEvent):
                    print(event.progress, event.message)
    """

    async def open_get(target_url: str, sent: dict[str, str], idle: float) -> AsyncConnection:
        wait = _stream_timeout(client, idle)
        request = client.build_request("GET", target_url, headers=sent, timeout=wait)
        try:
            answer = await client.send(request, stream=True, follow_redirects=False)
        except RETRIED as e:
            raise Unreachable(str(e) or type(e).__name__) from e
        return _AsyncHttpxConnection(answer)

    url, token = target(response, url, token)
    return async_follow(open_get, url, token, timeout=timeout, header=header, headers=headers)


async def async_wait_for(
    client: httpx.AsyncClient,
    response: Any = None,
    *,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 300.0,
    header: str = DEFAULT_HEADER,
    long_poll: int = 20,
    on_progress: Callable[[float | None, str | None], None] | None = None,
    headers: Mapping[str, str] | None = None,
    max_backoff: float = 30.0,
) -> JobResult:
    """Wait with the asyncio ``client`` until a job finishes and return its answer.

    As :func:`wait_for`, in a coroutine: the polls and the pauses between them
    leave the event loop free. ``on_progress`` is a plain function.

    :raises TimeoutError: the job did not finish within ``timeout`` seconds.
    :raises AsyncRequestError: the server refused the token (400), knows no such
        job (404), answered another error, or stayed out of reach.
    """
    options = {
        "timeout": timeout,
        "header": header,
        "long_poll": long_poll,
        "on_progress": on_progress,
        "headers": headers,
        "max_backoff": max_backoff,
    }
    steps = _steps(response, url, token, options)
    sent: Answer | Unreachable | None = None
    try:
        while True:
            step = steps.send(sent)
            if isinstance(step, Sleep):
                await asyncio.sleep(step.seconds)
                sent = None
                continue
            try:
                sent = _answer_of(await client.get(step.url, **_options(client, step)))
            except RETRIED as e:
                unreachable = Unreachable(str(e) or type(e).__name__)
                unreachable.__cause__ = e
                sent = unreachable
    except StopIteration as stop:
        result: JobResult = stop.value
        return result


def download(
    client: httpx.Client,
    result: JobResult,
    to: Destination | None = None,
    *,
    header: str = DEFAULT_HEADER,
    headers: Mapping[str, str] | None = None,
) -> bytes | int:
    """Stream a processed job's reply with ``client``: its bytes, or written to ``to``.

    As :func:`flask_async_request.client.download`, with httpx: the bytes come
    a block at a time, their size and SHA-256 are checked, and a file begun at
    a path is removed if the download fails. A connection that fails raises
    httpx's own error (``httpx.TransportError``).

    :raises AsyncRequestError: the job was not processed, the server answered an
        error, or the bytes are not those the job recorded.
    """
    receiver = _receiver(result, to)
    if not result.stored:
        return receiver.finish()
    url, sent = result_request(result, header, headers)
    try:
        with client.stream("GET", url, headers=sent, follow_redirects=False) as answer:
            if answer.status_code != 200:
                answer.read()
                raise _refused(url, answer)
            for block in answer.iter_bytes():
                receiver.write(block)
    except BaseException:
        receiver.abort()
        raise
    return receiver.finish()


async def async_download(
    client: httpx.AsyncClient,
    result: JobResult,
    to: Destination | None = None,
    *,
    header: str = DEFAULT_HEADER,
    headers: Mapping[str, str] | None = None,
) -> bytes | int:
    """As :func:`download`, in a coroutine with the asyncio ``client``."""
    receiver = _receiver(result, to)
    if not result.stored:
        return receiver.finish()
    url, sent = result_request(result, header, headers)
    try:
        async with client.stream("GET", url, headers=sent, follow_redirects=False) as answer:
            if answer.status_code != 200:
                await answer.aread()
                raise _refused(url, answer)
            async for block in answer.aiter_bytes():
                receiver.write(block)
    except BaseException:
        receiver.abort()
        raise
    return receiver.finish()


def _receiver(result: JobResult, to: Destination | None) -> Receiver:
    if result.status != "processed":
        raise AsyncRequestError(f"The job is {result.status}; it has no result to download.")
    receiver = Receiver(result, to)
    if not result.stored:
        receiver.write(result.text_bytes())
    return receiver


def _refused(url: str, answer: httpx.Response) -> AsyncRequestError:
    return AsyncRequestError(f"Downloading {url} answered {answer.status_code}: {answer.text}")
