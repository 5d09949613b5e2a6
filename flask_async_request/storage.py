"""The result store interface: where a large or binary reply is kept, out of the jobs row.

Three stores implement it: the database's (chunks in a table of the app's own
database, ``results.DatabaseStore``), a directory
(:class:`~flask_async_request.DirectoryStore`) and S3-compatible
object storage (:class:`~flask_async_request.S3Store`). A store writes a
job's result under a name of the job and its attempt, made visible only once
complete, and hands back its **location**: a url naming the store and the
key, recorded on the job with its size and SHA-256 in the statement that ends
the job. The result is read from that location, whatever the app's setting is
by then, so changing ``ASYNC_REQUEST_RESULT_STORE`` loses no result.

A store knows nothing of the jobs table: what it has left over (a write a crash
cut short, or a result no job came to record) it lists
(:meth:`~flask_async_request.ResultStore.leftovers`), and the purge decides from the jobs table
which of those to delete.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

#: A result's name in a store: the job's id and the attempt that wrote it.
_NAME = re.compile(r"(\d{1,19})-(\d{1,9})")


def result_name(job_id: int, attempt: int) -> str:
    """The name a store keeps the result of ``job_id``'s ``attempt`` under."""
    return f"{job_id}-{attempt}"


def parse_name(name: str) -> tuple[int, int] | None:
    """The job id and attempt of a :func:`result_name`; ``None`` for another name."""
    match = _NAME.fullmatch(name)
    return None if match is None else (int(match[1]), int(match[2]))


class Written(NamedTuple):
    """A result written whole: what the job's end records of it."""

    size: int
    sha256: str
    #: Where it is: ``None`` for the database's chunks, else the store's url of it.
    location: str | None = None


class Leftover(NamedTuple):
    """Something a store holds that may be no job's result: the purge decides."""

    #: What :meth:`~flask_async_request.ResultStore.delete` takes to delete it.
    location: str
    #: The job and attempt it was written for.
    job_id: int
    attempt: int
    #: Seconds since it was last written to.
    age: float
    #: Whether it is complete (a result that may be its job's), or a write cut short.
    complete: bool


class Redirect(NamedTuple):
    """Serve a stored result by sending the client elsewhere: a short-lived url of its own."""

    url: str


class LocalFile(NamedTuple):
    """A stored result that is a file on this machine's disk."""

    path: str
    #: Its path under the directory store's root, for ``X-Accel-Redirect``.
    name: str


class ResultStore(abc.ABC):
    """Where results too large or too binary for the jobs row are written and read.

    A result is written once, streamed (never whole in memory) and visible
    only when complete; it is read a range at a time; it is deleted with its
    job (purge, retention, cancel) or when it turns out to be no job's.
    """

    #: The scheme of the locations this store writes (``file``, ``s3``); the
    #: database's results have no location.
    scheme: str = ""
    #: Seconds a leftover (:meth:`leftovers`) must have gone unwritten before
    #: the purge deletes it: a write in progress, or a result renamed into
    #: place whose job's end is being stored, is never deleted under its writer.
    stale_after: float = 3600

    @abc.abstractmethod
    def write(
        self,
        name: str,
        chunks: Iterable[bytes],
        *,
        content_type: str | None = None,
        headers: list[tuple[str, str]] | None = None,
    ) -> Written:
        """Store ``chunks`` as the result ``name``; visible at its location once all are written.

        Whatever ``chunks`` raises (the worker's own code runs as they are read)
        propagates, and what was written so far is never visible as a result.
        """

    @abc.abstractmethod
    def location_of(self, name: str) -> str:
        """The location the result ``name`` is (or would be) written to."""

    def owns(self, location: str) -> bool:
        """Whether ``location`` is one of this store's."""
        return False

    @abc.abstractmethod
    def read(self, location: str, start: int, stop: int) -> Iterator[bytes]:
        """Bytes ``start`` to ``stop`` (excluded) of the result at ``location``, a block at a time.

        :raises ResultMissing: the result is gone (as it is read, too).
        """

    @abc.abstractmethod
    def delete(self, location: str) -> None:
        """Delete the result at ``location``; nothing if it is not there."""

    @abc.abstractmethod
    def leftovers(self) -> Iterator[Leftover]:
        """Every result and write cut short this store holds, for the purge to sort out."""

    def serve(self, location: str, *, expires_in: int) -> Redirect | LocalFile | None:
        """How the result url may hand this result on: ``None`` streams it through :meth:`read`.

        :param expires_in: seconds a url made for it (a redirect's) may stay valid.
        """
        return None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.describe()}>"

    def describe(self) -> str:
        """Where this store keeps its results, for logs and errors."""
        return self.scheme

    def __eq__(self, other: Any) -> bool:
        return type(other) is type(self) and other.describe() == self.describe()

    def __hash__(self) -> int:
        return hash((type(self), self.describe()))


class ResultMissing(LookupError):
    """A stored result being read is gone: its job was purged meanwhile."""
