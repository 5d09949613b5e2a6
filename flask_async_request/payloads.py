"""Replies that are not a short text: bytes, files, streams and responses, with their headers.

A worker's ``execute`` may return, besides ``(status, body)`` with a str body:

* ``(status, body, content_type, headers)``, ``headers`` a mapping or pairs
  whose names are among :data:`KEPT_HEADERS`;
* ``body`` as ``bytes`` (or ``bytearray``, ``memoryview``), a file path
  (``pathlib.Path``), a binary file object, or an iterable of ``bytes`` chunks;
* a Flask or Werkzeug ``Response``, ``send_file``'s
  or a streamed one: its status, body and kept headers.

:func:`payload_of` turns such a reply into a :class:`Payload`, whose body is read
a chunk at a time, so a large file never sits whole in memory.
"""

from __future__ import annotations

import dataclasses
import io
import json
import mimetypes
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from werkzeug.wrappers import Response

from .exceptions import InvalidReply
from .values import short_repr, unstorable
from .worker import content_type_of, status_code_of

#: Response headers a reply keeps, besides ``Content-Type``: what describes the
#: representation and where it leads. ``ETag`` is not among them: the result url
#: gives a strong ``ETag`` of its own, from the bytes' SHA-256. Never kept:
#: ``Set-Cookie`` (a cookie for the worker's replayed request, not for the
#: client), hop-by-hop headers, and what the result url works out itself
#: (``Content-Length``, ``Accept-Ranges``, ``Content-Range``).
KEPT_HEADERS = (
    "Content-Disposition",
    "Content-Language",
    "Content-Encoding",
    "Last-Modified",
    "Cache-Control",
    "Expires",
    "Link",
    "Location",
)
_KEPT = {name.lower(): name for name in KEPT_HEADERS}

#: Bytes read from a file at a time.
READ_SIZE = 256 * 1024

#: The content type of a binary reply that names none.
BINARY = "application/octet-stream"

#: Characters of a returned value that an error message about it shows.
_ECHOED = 200

Headers = list[tuple[str, str]]


@dataclasses.dataclass
class Payload:
    """A reply read a chunk at a time: its status, content type, kept headers and body."""

    status_code: int
    content_type: str | None
    headers: Headers
    #: The body, a piece at a time; iterating it may run the worker's own code.
    chunks: Iterable[bytes]
    #: A text body, whole: a short one stays in the jobs table.
    text: str | None = None
    #: Called once the body is read, or given up.
    close: Callable[[], None] | None = None

    def finish(self) -> None:
        """Release what the body holds (an open file, a response)."""
        if self.close is not None:
            close, self.close = self.close, None
            close()


def payload_of(reply: object) -> Payload | None:
    """A worker's reply as a :class:`Payload`; ``None`` for a plain text reply.

    A plain text reply is ``(status, body)`` or ``(status, body, content_type)``
    with a str or ``None`` body: ``normalize_reply`` takes it.

    :raises InvalidReply: for a reply of no known shape, or headers not kept.
    """
    if isinstance(reply, Response):
        return from_response(reply)
    if not isinstance(reply, (tuple, list)) or len(reply) not in (2, 3, 4):
        return None
    status, body, *rest = reply
    if len(rest) < 2 and (body is None or isinstance(body, str)):
        return None
    content_type = content_type_of(rest[0] if rest else None)
    headers = kept_headers(rest[1] if len(rest) > 1 else None, strict=True)
    code = status_code_of(status)
    if body is None or isinstance(body, str):
        text = body or ""
        reason = unstorable(text)
        if reason is not None:
            raise InvalidReply(f"returned a body that cannot be stored: {reason}")
        return Payload(code, content_type, headers, (), text=text)
    if isinstance(body, (bytes, bytearray, memoryview)):
        return Payload(code, content_type or BINARY, headers, [bytes(body)])
    if isinstance(body, os.PathLike):
        path = os.fspath(body)
        guessed = mimetypes.guess_type(str(path))[0]
        try:
            file = open(path, "rb")  # noqa: SIM115 - closed by Payload.finish
        except OSError as e:
            raise InvalidReply(
                f"returned the file {short_repr(path)}, which cannot be read: {e}"
            ) from None
        return Payload(
            code, content_type or guessed or BINARY, headers, _read(file), close=file.close
        )
    if isinstance(body, io.TextIOBase):
        raise InvalidReply("returned a file opened in text mode; open it in binary mode ('rb')")
    if callable(getattr(body, "read", None)):
        close = getattr(body, "close", None)
        return Payload(code, content_type or BINARY, headers, _read(body), close=close)
    if isinstance(body, Iterable) and not isinstance(body, (Mapping, str)):
        close = getattr(body, "close", None)
        return Payload(code, content_type or BINARY, headers, _checked(body), close=close)
    raise InvalidReply(
        f"returned a body of type {type(body).__name__}; expected a str, bytes, a file path"
        " (pathlib.Path), a binary file object or an iterable of bytes"
    )


def from_response(response: Response) -> Payload:
    """A Flask or Werkzeug response as a :class:`Payload`: status, body and kept headers.

    Its body is read as a WSGI server would (``send_file``'s file a block at a
    time, a streamed response's generator as it yields); headers not kept are
    left out.
    """
    headers = kept_headers(response.headers.items(), strict=False)
    return Payload(
        response.status_code,
        response.headers.get("Content-Type"),
        headers,
        response.iter_encoded(),
        close=response.close,
    )


def kept_headers(given: object, *, strict: bool) -> Headers:
    """The headers of ``given`` (a mapping, or pairs) among :data:`KEPT_HEADERS`.

    :param strict: refuse any other header (a worker's), rather than leave it out
        (a view's, which has ``Set-Cookie`` and the like as a matter of course).
    :raises InvalidReply: for headers that are not name and value strs, or that
        cannot be stored or sent.
    """
    if given is None:
        return []
    items: Iterable[Any]
    if isinstance(given, Mapping):
        items = given.items()
    elif isinstance(given, Iterable) and not isinstance(given, (str, bytes)):
        items = given
    else:
        raise InvalidReply(
            f"returned headers {short_repr(given, _ECHOED)}; expected a mapping or (name, value)"
            " pairs"
        )
    kept: Headers = []
    for item in items:
        if not isinstance(item, (tuple, list)) or len(item) != 2:
            raise InvalidReply(
                f"returned a header {short_repr(item, _ECHOED)}; expected a (name, value) pair"
            )
        name, value = item
        if not isinstance(name, str) or not isinstance(value, str):
            raise InvalidReply(f"returned a header {short_repr(item, _ECHOED)}; expected strs")
        canonical = _KEPT.get(name.lower())
        if canonical is None:
            if strict:
                raise InvalidReply(
                    f"returned the header {short_repr(name, _ECHOED)}, which a reply does not"
                    f" keep; the headers kept are {', '.join(KEPT_HEADERS)}"
                )
            continue
        if "\r" in value or "\n" in value or unstorable(value) is not None:
            raise InvalidReply(f"returned a {canonical} header that cannot be stored or sent")
        kept.append((canonical, value))
    return kept


def encode_headers(headers: Headers) -> str | None:
    """Kept headers as the jobs table stores them; ``None`` for none."""
    return json.dumps([list(pair) for pair in headers]) if headers else None


def decode_headers(stored: str | None) -> Headers:
    """The headers :func:`encode_headers` stored; none for a value it did not write."""
    try:
        pairs = json.loads(stored) if stored else []
    except ValueError:
        return []
    if not isinstance(pairs, list):
        return []
    return [
        (name, value)
        for pair in pairs
        if isinstance(pair, list) and len(pair) == 2
        for name, value in [pair]
        if isinstance(name, str) and isinstance(value, str) and name.lower() in _KEPT
    ]


def _read(file: Any) -> Iterator[bytes]:
    """A binary file's content, :data:`READ_SIZE` bytes at a time."""
    while True:
        block = file.read(READ_SIZE)
        if not block:
            return
        if not isinstance(block, (bytes, bytearray, memoryview)):
            raise InvalidReply(
                f"returned a file that reads {type(block).__name__}; open it in binary mode ('rb')"
            )
        yield bytes(block)


def _checked(chunks: Iterable[object]) -> Iterator[bytes]:
    """``chunks``, each checked to be bytes."""
    for chunk in chunks:
        if not isinstance(chunk, (bytes, bytearray, memoryview)):
            raise InvalidReply(
                f"returned a body whose chunks are {type(chunk).__name__}; expected bytes"
            )
        yield bytes(chunk)
