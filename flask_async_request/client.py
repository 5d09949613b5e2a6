"""A client for service-to-service callers: wait for a job another service started.

It needs only the standard library::

    from flask_async_request.client import wait_for

    response = requests.post("https://reports.internal/reports", json={"month": 3})
    result = wait_for(response)            # or wait_for(url=..., token=...)
    if result.ok:
        report = json.loads(result.body)

The polling itself (long polls, ``Retry-After``, retries of 503 and of failed
connections, the deadline) is written once, without any I/O, in
:mod:`flask_async_request.client_polling`; :func:`wait_for` drives it with
:mod:`urllib` or a session, and :mod:`flask_async_request.client_httpx` with
httpx, in threads or asyncio.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from .client_events import Connection, JobEvent, follow
from .client_polling import (
    DEFAULT_HEADER,
    Answer,
    Destination,
    Get,
    JobResult,
    Receiver,
    Unreachable,
    drive,
    poll_steps,
    result_request,
    target,
)
from .exceptions import AsyncRequestError

__all__ = ["JobResult", "Session", "download", "events", "session_transport", "wait_for"]


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects come back as answers: following one would send the token elsewhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _urllib_get(step: Get) -> Answer:
    request = urllib.request.Request(step.url, headers=step.headers)
    try:
        with _OPENER.open(request, timeout=step.timeout) as answer:
            text = answer.read().decode("utf-8", "replace")
            return Answer(answer.status, answer.headers, text)
    except urllib.error.HTTPError as e:
        return Answer(e.code, e.headers, e.read().decode("utf-8", "replace"))
    except (urllib.error.URLError, OSError) as e:
        raise Unreachable(str(e)) from e


class Session(Protocol):
    """What :func:`wait_for` needs of a ``session``: a requests-like ``get``."""

    def get(self, url: str, **kwargs: Any) -> Any: ...


def _text(response: Any) -> str:
    text = getattr(response, "text", None)
    if isinstance(text, str):
        return text
    # A Werkzeug response older than its ``text`` property.
    return str(response.get_data(as_text=True))


def session_transport(session: Session) -> Callable[[Get], Answer]:
    """GET with ``session``: a ``requests.Session``, or Flask's test client.

    A requests-like session gets each poll's timeout; a client that calls a WSGI
    application in this process (Flask's or Werkzeug's test client, which has an
    ``application``) takes none, and raises no connection errors.
    """
    in_process = getattr(session, "application", None) is not None

    def get(step: Get) -> Answer:
        options: dict[str, Any] = {"headers": step.headers}
        if not in_process:
            # requests follows redirects unless told not to, taking the token along.
            options.update(timeout=step.timeout, allow_redirects=False)
        try:
            response = session.get(step.url, **options)
        except OSError as e:  # requests' ConnectionError and Timeout are OSErrors.
            raise Unreachable(str(e)) from e
        return Answer(int(response.status_code), response.headers, _text(response))

    return get


def wait_for(
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
    session: Session | None = None,
) -> JobResult:
    """Wait until a job finishes and return its answer.

    Give the 202 ``response`` of the view that started the job (a ``requests``,
    ``httpx`` or Flask test client response, or what :func:`urllib.request.urlopen`
    returns, its body not read yet), or its ``url`` and ``token``. Each poll
    asks the server to hold it for up to ``long_poll`` seconds (``Prefer: wait``),
    so a finished job is seen at once and few requests are made; a server that
    does not hold it is polled again after its ``Retry-After``.

    A server that answers 503 (its database is out of reach), or a proxy that
    answers 502 or 504 (the app restarts), is asked again after its
    ``Retry-After`` or a backoff; a connection that fails (a restart, a network
    blip) is tried again with a backoff doubling up to ``max_backoff`` seconds,
    all within ``timeout``. A redirect is not followed (it would carry the
    token elsewhere): it is an :class:`~flask_async_request.AsyncRequestError`.

    :param on_progress: called with ``(fraction, message)`` on every pending answer.
    :param headers: more headers for every poll, such as ``Authorization`` or
        ``Cookie`` for a job bound to an identity.
    :param session: polls with this session's ``get`` instead of :mod:`urllib`:
        a ``requests.Session`` (its cookies, auth and adapters apply), or Flask's
        test client. See :mod:`flask_async_request.client_httpx` for httpx.
    :raises TimeoutError: the job did not finish within ``timeout`` seconds.
    :raises AsyncRequestError: the server refused the token (400), knows no such
        job (404) or answered another error.
    :raises TypeError: ``response`` is not a response (see above), and no
        ``url`` and ``token`` were given.
    """
    url, token = target(response, url, token)
    steps = poll_steps(
        url,
        token,
        timeout=timeout,
        header=header,
        long_poll=long_poll,
        on_progress=on_progress,
        headers=headers,
        max_backoff=max_backoff,
    )
    return drive(steps, _urllib_get if session is None else session_transport(session))


# Following a job's events --------------------------------------------------------------


class _UrllibConnection:
    """An answer of :mod:`urllib`, open, as :func:`.client_events.follow` reads it."""

    def __init__(self, response: Any, status: int) -> None:
        self._response = response
        self.status = status
        self.headers = response.headers

    def lines(self) -> Iterator[str]:
        try:
            for line in self._response:
                yield line.decode("utf-8", "replace")
        except OSError as e:  # A timeout between two lines, a reset connection.
            raise Unreachable(str(e)) from e

    def text(self) -> str:
        return str(self._response.read().decode("utf-8", "replace"))

    def close(self) -> None:
        self._response.close()


def _urllib_open(url: str, headers: dict[str, str], timeout: float) -> Connection:
    request = urllib.request.Request(url, headers=headers)
    try:
        response = _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        return _UrllibConnection(e, e.code)
    except (urllib.error.URLError, OSError) as e:
        raise Unreachable(str(e)) from e
    return _UrllibConnection(response, response.status)


def events(
    response: Any = None,
    *,
    url: str | None = None,
    token: str | None = None,
    timeout: float = 300.0,
    header: str = DEFAULT_HEADER,
    headers: Mapping[str, str] | None = None,
) -> Iterator[JobEvent]:
    """The job's events as they happen, until its end: a stream of server-sent events.

    Yields :class:`~flask_async_request.client_event_steps.StatusEvent`,
    :class:`~flask_async_request.client_event_steps.ProgressEvent` and, last,
    :class:`~flask_async_request.client_event_steps.EndEvent`, whose ``result`` is
    what :func:`wait_for` would return::

        for event in events(requests.post(".../reports", json={"month": 3})):
            if isinstance(event, ProgressEvent):
                print(event.progress, event.message)
            elif isinstance(event, EndEvent):
                report = json.loads(event.result.body)

    A stream that ends early is opened again with ``Last-Event-ID``; a server
    that answers streams with JSON (sync workers) is followed as a long poll.
    The arguments are those of :func:`wait_for`.

    :raises TimeoutError: the job did not finish within ``timeout`` seconds.
    :raises AsyncRequestError: the server refused the token (400), knows no
        such job (404), or answered another error.
    """
    url, token = target(response, url, token)
    return follow(_urllib_open, url, token, timeout=timeout, header=header, headers=headers)


# Downloading a result -------------------------------------------------------------------

#: Bytes read from a download at a time.
DOWNLOAD_BLOCK = 64 * 1024


def download(
    result: JobResult,
    to: Destination | None = None,
    *,
    header: str = DEFAULT_HEADER,
    headers: Mapping[str, str] | None = None,
    timeout: float = 300.0,
) -> bytes | int:
    """The bytes of a processed job's reply, or write them to ``to`` (a path or a binary file).

    A reply held in the result store (:attr:`JobResult.stored`) is downloaded
    from its result url a block at a time, never whole in memory when ``to`` is
    given, and its size and SHA-256 are checked; a reply kept as text is
    encoded in its charset. With no ``to``, the bytes are returned; else the
    number of bytes written. A file begun at a path is removed if the download
    fails. A redirect is not followed (it would carry the token elsewhere).

    ::

        result = wait_for(response)
        download(result, "report.pdf")

    :raises AsyncRequestError: the job was not processed, the server answered
        an error, or the bytes are not those the job recorded.
    :raises OSError: the connection failed.
    """
    if result.status != "processed":
        raise AsyncRequestError(f"The job is {result.status}; it has no result to download.")
    receiver = Receiver(result, to)
    if not result.stored:
        receiver.write(result.text_bytes())
        return receiver.finish()
    url, sent = result_request(result, header, headers)
    try:
        request = urllib.request.Request(url, headers=sent)
        try:
            with _OPENER.open(request, timeout=timeout) as answer:
                while block := answer.read(DOWNLOAD_BLOCK):
                    receiver.write(block)
        except urllib.error.HTTPError as e:
            text = e.read().decode("utf-8", "replace")
            raise AsyncRequestError(f"Downloading {url} answered {e.code}: {text}") from None
    except BaseException:
        receiver.abort()
        raise
    return receiver.finish()
