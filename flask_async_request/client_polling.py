"""The Python clients' polling, written once without any I/O: :func:`poll_steps`.

Long polls, ``Retry-After``, retries of 429, 502, 503 and 504 and of failed
connections, and the deadline are decided here, step by step; a transport
performs each step: :func:`flask_async_request.client.wait_for` with
:mod:`urllib` or a session, :mod:`flask_async_request.client_httpx` with httpx,
in threads or asyncio. Reading a starting view's 202 (:func:`start_of`) is here
too. Like the clients, it needs only the standard library.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import time
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
    token: str | None = field(default=None, repr=False, compare=False)

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
    finishes, and returns its :class:`~flask_async_request.client.JobResult`.
    The arguments are those of :func:`.client.wait_for`.

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
        if answer.status in RETRIED:
            # The server (503: its database is out of reach) or a proxy in front of it
            # (502, 504: it restarts; 429: it limits requests): try again after its
            # Retry-After, else a backoff.
            yield pause(retry_after_seconds(answer.headers.get("Retry-After"), backoff))
            backoff = min(backoff * 2, max_backoff)
            continue
        backoff = 1.0
        if answer.status >= 300:
            raise AsyncRequestError(f"Polling {url} answered {answer.status}: {answer.text}")
        body = job_answer(url, answer)
        if answer.status == 200:
            return result_of(body, token)
        if on_progress is not None:
            on_progress(body.get("progress"), body.get("message"))
        if not _held(answer.headers.get("Preference-Applied")):
            # Not held (long polls off, or a server that ignores them): wait as told.
            yield pause(retry_after_seconds(answer.headers.get("Retry-After"), 1.0))


#: Answers of the status endpoint that say "ask again later", never a job's reply
#: (a finished job's reply comes in a 200): 429 from a limit on requests in front of it.
RETRIED = frozenset({429, 502, 503, 504})
_APPLIED_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+)", re.IGNORECASE)


def _held(applied: str | None) -> bool:
    """Whether ``Preference-Applied`` says the server held the poll (a wait above 0)."""
    match = _APPLIED_WAIT.search(applied or "")
    return match is not None and int(match.group(1)) > 0


def result_of(body: dict[str, Any], token: str) -> JobResult:
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


def job_answer(url: str, answer: Answer) -> dict[str, Any]:
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


def retry_after_seconds(retry_after: str | None, default: float) -> float:
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
        ``http.client.HTTPResponse`` that :func:`urllib.request.urlopen`
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


# Downloading a result -------------------------------------------------------------------

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
