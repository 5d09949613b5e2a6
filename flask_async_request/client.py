"""A client for service-to-service callers: wait for a job another service started.

It needs only the standard library::

    from flask_async_request.client import wait_for

    response = requests.post("https://reports.internal/reports", json={"month": 3})
    result = wait_for(response)            # or wait_for(url=..., token=...)
    if result.ok:
        report = json.loads(result.body)

The polling itself (long polls, ``Retry-After``, retries of 503 and of failed
connections, the deadline) is written once, without any I/O, in
``poll_steps()``; :func:`wait_for` drives it with :mod:`urllib` or a session,
and :mod:`flask_async_request.client_httpx` with httpx, in threads or asyncio.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Protocol

from .exceptions import AsyncRequestError

DEFAULT_HEADER = "X-JOB-AUTHORIZATION"

#: Seconds a poll may take beyond the wait it asks the server for.
POLL_GRACE = 30


@dataclass(frozen=True)
class JobResult:
    """A finished job's answer."""

    #: ``"processed"``, ``"failed"`` or ``"cancelled"``.
    status: str
    #: The status code the worker returned (500 when it failed, 499 when cancelled).
    status_code: int
    #: The body the worker returned; empty for a reply held in the result store
    #: (:attr:`stored`), which :func:`download` fetches.
    body: str = ""
    #: The reply's media type, when the job gave one.
    content_type: str | None = None
    #: The headers the reply kept (``Content-Disposition`` ...), as pairs.
    headers: tuple[tuple[str, str], ...] = ()
    #: The size in bytes of a reply held in the result store.
    size: int | None = None
    #: The SHA-256 of its bytes, in hex; :func:`download` checks it.
    sha256: str | None = None
    #: The job's result url, where its bytes are downloaded.
    href: str | None = None
    #: The job's token, which the result url takes as the status url does.
    token: str | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """Whether the job was processed with a 2xx status code."""
        return self.status == "processed" and 200 <= self.status_code < 300

    @property
    def stored(self) -> bool:
        """Whether the reply is held in the result store: download it with :func:`download`."""
        return self.href is not None

    def text_bytes(self) -> bytes:
        """A reply kept as text, as bytes in its own charset (UTF-8 when it names none)."""
        match = _CHARSET.search(self.content_type or "")
        charset = match.group(1) if match else "utf-8"
        try:
            return self.body.encode(charset)
        except (LookupError, UnicodeEncodeError):
            return self.body.encode()


_CHARSET = re.compile(r";\s*charset=\"?([^\s;\"]+)", re.IGNORECASE)


# The transport-independent core -------------------------------------------------------


class Headers(Protocol):
    """Response headers, looked up without regard to case (every HTTP library's are)."""

    def get(self, name: str, /) -> str | None: ...


@dataclass(frozen=True)
class Get:
    """A step of :func:`poll_steps`: send this GET, then send back its :class:`Answer`."""

    url: str
    headers: dict[str, str]
    #: Seconds the server is asked to hold the poll (``Prefer: wait``).
    wait: int
    #: Seconds the whole request may take.
    timeout: float


@dataclass(frozen=True)
class Sleep:
    """A step of :func:`poll_steps`: sleep this long, then send back ``None``."""

    seconds: float


@dataclass(frozen=True)
class Answer:
    """What one poll got back."""

    status: int
    headers: Headers
    text: str


class Unreachable(Exception):
    """The poll got no answer: the connection failed or timed out.

    A transport raises it from the cause (its own error); a driver sends it back
    to :func:`poll_steps` in place of an :class:`Answer`.
    """


#: What :func:`poll_steps` yields, is sent back, and returns.
Steps = Generator[Get | Sleep, Answer | Unreachable | None, JobResult]


def poll_steps(
    url: str,
    token: str,
    *,
    timeout: float = 300.0,
    header: str = DEFAULT_HEADER,
    long_poll: int = 20,
    on_progress: Callable[[float | None, str | None], None] | None = None,
    headers: Mapping[str, str] | None = None,
    max_backoff: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> Steps:
    """The steps of waiting for a job, without I/O: a transport performs each one.

    It yields :class:`Get` (send back the :class:`Answer`, or an
    :class:`Unreachable`) and :class:`Sleep` (send back ``None``) until the job
    finishes, and returns its :class:`JobResult`. The arguments are those of
    :func:`wait_for`.

    :raises TimeoutError: the job did not finish within ``timeout`` seconds.
    :raises AsyncRequestError: the server refused the token (400), knows no such
        job (404), answered another error, or stayed out of reach.
    """
    deadline = clock() + timeout
    backoff = 1.0

    def pause(seconds: float) -> Sleep:
        return Sleep(max(0.0, min(seconds, deadline - clock())))

    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            raise TimeoutError(f"The job at {url} did not finish within {timeout} s.")
        wait = max(0, min(long_poll, int(remaining)))
        sent = {header: f"Bearer {token}", "Accept": "application/json"}
        if wait > 0:
            sent["Prefer"] = f"wait={wait}"
        sent.update(headers or {})
        # No request outlives the deadline by more than a second.
        answer = yield Get(url, sent, wait, min(wait + POLL_GRACE, max(remaining, wait) + 1.0))
        if isinstance(answer, Unreachable):
            if deadline - clock() <= backoff:
                cause = answer.__cause__ or answer
                raise AsyncRequestError(f"Polling {url} failed: {cause}") from cause
            yield pause(backoff)
            backoff = min(backoff * 2, max_backoff)
            continue
        if answer is None:
            raise TypeError("poll_steps() needs the Answer of each Get sent back.")
        if answer.status in _RETRIED:
            # The server (503: its database is out of reach) or a proxy in front of it
            # (502, 504: it restarts): try again after its Retry-After, else a backoff.
            yield pause(_seconds(answer.headers.get("Retry-After"), backoff))
            backoff = min(backoff * 2, max_backoff)
            continue
        backoff = 1.0
        if answer.status >= 300:
            raise AsyncRequestError(f"Polling {url} answered {answer.status}: {answer.text}")
        body = _job_answer(url, answer)
        if answer.status == 200:
            return _result_of(body, token)
        if on_progress is not None:
            on_progress(body.get("progress"), body.get("message"))
        if not _held(answer.headers.get("Preference-Applied")):
            # Not held (long polls off, or a server that ignores them): wait as told.
            yield pause(_seconds(answer.headers.get("Retry-After"), 1.0))


#: Answers of the status endpoint that say "ask again later", never a job's reply
#: (a finished job's reply comes in a 200).
_RETRIED = frozenset({502, 503, 504})
_APPLIED_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+)", re.IGNORECASE)


def _held(applied: str | None) -> bool:
    """Whether ``Preference-Applied`` says the server held the poll (a wait above 0)."""
    match = _APPLIED_WAIT.search(applied or "")
    return match is not None and int(match.group(1)) > 0


def _result_of(body: dict[str, Any], token: str) -> JobResult:
    """The :class:`JobResult` of a finished job's JSON."""
    reply = body["response"]
    headers = tuple(
        (str(pair[0]), str(pair[1]))
        for pair in reply.get("headers") or ()
        if isinstance(pair, list) and len(pair) == 2
    )
    size = reply.get("size")
    return JobResult(
        body["status"],
        int(reply["status_code"]),
        str(reply.get("body") or ""),
        reply.get("content_type"),
        headers,
        None if size is None else int(size),
        reply.get("sha256"),
        reply.get("href"),
        token,
    )


def _job_answer(url: str, answer: Answer) -> dict[str, Any]:
    """The JSON object of a 2xx answer of the status endpoint."""
    try:
        body = json.loads(answer.text)
    except ValueError:
        body = None
    if not isinstance(body, dict) or (
        answer.status == 200 and not isinstance(body.get("response"), dict)
    ):
        raise AsyncRequestError(
            f"Polling {url} answered {answer.status} with a body that is not a job's status:"
            f" {answer.text[:200]!r}"
        )
    return body


def _seconds(retry_after: str | None, default: float) -> float:
    """A ``Retry-After`` in seconds (the HTTP-date form counts as ``default``)."""
    try:
        return max(0.0, float(retry_after)) if retry_after else default
    except ValueError:
        return default


#: What :func:`start_of` takes, for its errors.
ACCEPTED_RESPONSES = (
    "a requests, httpx or Flask test client response, or the http.client.HTTPResponse"
    " of urllib.request.urlopen (its body not read yet)"
)


def _status_of(response: Any) -> int | None:
    """A response's status code: ``status_code`` (requests, httpx, Werkzeug) or ``status``.

    Werkzeug's ``status`` is the status line ("202 ACCEPTED"), hence ``status_code``
    first; :mod:`http.client`, :mod:`urllib` and aiohttp responses only have ``status``.
    """
    for name in ("status_code", "status"):
        status = getattr(response, name, None)
        if isinstance(status, int) and not isinstance(status, bool):
            return status
    return None


def _body_of(response: Any) -> Any:
    """A response's JSON body, parsed by the response itself or read from it."""
    body = getattr(response, "json", None)
    if callable(body):
        return body()
    if body is not None:
        return body  # Werkzeug's parsed ``json`` property.
    read = getattr(response, "read", None)
    if not callable(read):
        return None
    data = read()
    if not data:
        raise AsyncRequestError(
            "The 202 answer's body is empty: it was read already. Give wait_for() the"
            " response before reading it, or url= and token= from the body you read."
        )
    try:
        return json.loads(data)
    except ValueError:
        return None


def start_of(response: Any) -> tuple[str, str]:
    """The status url and token of a starting view's 202 answer.

    :param response: the answer of the view that started the job: a requests,
        httpx or Flask test client response, or the
        :class:`http.client.HTTPResponse` that :func:`urllib.request.urlopen`
        returns, its body not read yet.
    :raises TypeError: ``response`` is none of those: it has no status code.
    :raises AsyncRequestError: the answer is not a 202, or holds no token or url.
    """
    status = _status_of(response)
    if status is None:
        raise TypeError(
            f"wait_for() takes {ACCEPTED_RESPONSES}, or url= and token=;"
            f" got {type(response).__qualname__}, which has no status code."
        )
    if status != 202:
        raise AsyncRequestError(f"The request that should start a job answered {status}, not 202.")
    body = _body_of(response)
    token = body.get("token") if isinstance(body, Mapping) else None
    url = (body.get("url") if isinstance(body, Mapping) else None) or response.headers.get(
        "Location"
    )
    if not token or not url:
        raise AsyncRequestError("The 202 answer holds no token, or no url nor Location header.")
    return str(url), str(token)


def target(response: Any, url: str | None, token: str | None) -> tuple[str, str]:
    """The url and token to poll: from the starting ``response``, or as given."""
    if response is not None:
        url, token = start_of(response)
    if not url or not token:
        raise TypeError("wait_for() needs the starting response, or url= and token=.")
    return url, token


# Transports ---------------------------------------------------------------------------


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


def drive(steps: Steps, get: Callable[[Get], Answer]) -> JobResult:
    """Perform :func:`poll_steps`' steps with ``get``, sleeping in this thread."""
    sent: Answer | Unreachable | None = None
    try:
        while True:
            step = steps.send(sent)
            if isinstance(step, Sleep):
                time.sleep(step.seconds)
                sent = None
                continue
            try:
                sent = get(step)
            except Unreachable as e:
                sent = e
    except StopIteration as stop:
        result: JobResult = stop.value
        return result


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


# Downloading a result -------------------------------------------------------------------

#: Bytes read from a download at a time.
DOWNLOAD_BLOCK = 64 * 1024

#: Where :func:`download` puts the bytes: a path, or a binary file open for writing.
Destination = str | os.PathLike[str] | BinaryIO


class Receiver:
    """Takes a result's bytes as they come, counts and hashes them, and checks them at the end.

    Transport-independent: :func:`download` and the httpx client's feed it.
    """

    def __init__(self, result: JobResult, to: Destination | None) -> None:
        self.result = result
        self._digest = hashlib.sha256()
        self.size = 0
        self._buffer: io.BytesIO | None = None
        self._path: str | None = None
        self._file: BinaryIO
        if to is None:
            self._buffer = io.BytesIO()
            self._file = self._buffer
        elif isinstance(to, (str, os.PathLike)):
            self._path = os.fspath(to)
            self._file = open(self._path, "wb")  # noqa: SIM115 - closed by finish or abort
        else:
            self._file = to

    def write(self, data: bytes) -> None:
        """Take the next bytes."""
        self._digest.update(data)
        self.size += len(data)
        self._file.write(data)

    def finish(self) -> bytes | int:
        """Check size and checksum; the bytes (to ``None``), or how many were written.

        :raises AsyncRequestError: the bytes are not those the job recorded.
        """
        if self._path is not None:
            self._file.close()
        expected = self.result.size
        if expected is not None and self.size != expected:
            self.abort()
            raise AsyncRequestError(
                f"The download of {self.result.href} ended after {self.size} of {expected} bytes."
            )
        if self.result.sha256 is not None and self._digest.hexdigest() != self.result.sha256:
            self.abort()
            raise AsyncRequestError(
                f"The download of {self.result.href} does not match its SHA-256."
            )
        return self._buffer.getvalue() if self._buffer is not None else self.size

    def abort(self) -> None:
        """Give up: a file begun at a path is removed."""
        if self._path is not None:
            self._file.close()
            with contextlib.suppress(OSError):
                os.remove(self._path)


def result_request(
    result: JobResult, header: str = DEFAULT_HEADER, headers: Mapping[str, str] | None = None
) -> tuple[str, dict[str, str]]:
    """The url and headers of the GET that downloads ``result``.

    :raises AsyncRequestError: the job has no result to download (failed or cancelled).
    """
    if result.href is None:
        raise AsyncRequestError(f"The job is {result.status}; its reply is its body.")
    sent = {"Accept": "*/*"}
    if result.token:
        sent[header] = f"Bearer {result.token}"
    sent.update(headers or {})
    return result.href, sent


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
