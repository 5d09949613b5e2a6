"""One read of a job's row for all the long polls its end woke.

An end wakes every request waiting on that job at once: a thousand of them
reading the same row at the same moment would be a thousand queries for one
answer. The first woken request reads the row; the others wait for that read
and, when it found the job ended, take its answer. A pending answer is never
shared: it could be stale, and they read again. Imports nothing of the package.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

_Reply = TypeVar("_Reply")

#: Seconds an ended job's reply is shared by the requests its end woke.
SHARED_FOR = 1.0
#: Ends kept before those shared long enough ago are forgotten.
KEEP_AT_MOST = 1024


class SharedReads(Generic[_Reply]):
    """Reads of jobs whose end may just have woken many requests, one read for all of them.

    :param read: reads job ``job_id`` as it is now.
    :param ended: whether a read found the job ended (or gone): only such a read is shared.
    """

    def __init__(self, read: Callable[[int], _Reply], ended: Callable[[_Reply], bool]) -> None:
        self._read = read
        self._ended_or_gone = ended
        self._lock = threading.Lock()
        #: The reads in flight, by job id: the requests woken with the reader wait on it.
        self.reading: dict[int, threading.Event] = {}
        #: The ends read, by job id, with when they were read (``time.monotonic``).
        self.ended: dict[int, tuple[float, _Reply]] = {}

    def read(self, job_id: int) -> _Reply:
        """Job ``job_id`` as read for this request, or as another woken request just read it."""
        # Most of a thousand woken requests find the end already read: a dict
        # lookup, with nothing to wait for.
        shared = self.recent_end(job_id)
        if shared is not None:
            return shared[1]
        with self._lock:
            reading = self.reading.get(job_id)
            leader = reading is None
            if reading is None:
                reading = self.reading[job_id] = threading.Event()
        if not leader:
            # The reader sets it however its read ends (its ``finally``): as long
            # as one's own read would take, and with no surge of reads after it.
            reading.wait()
            shared = self.recent_end(job_id)
            return shared[1] if shared is not None else self._read(job_id)
        try:
            reply = self._read(job_id)
            with self._lock:
                now = time.monotonic()
                if len(self.ended) > KEEP_AT_MOST:
                    # Kept bounded: the ends shared long enough ago are forgotten.
                    self.ended = {k: v for k, v in self.ended.items() if now - v[0] < SHARED_FOR}
                if self._ended_or_gone(reply):
                    self.ended[job_id] = (now, reply)
            return reply
        finally:
            with self._lock:
                del self.reading[job_id]
            reading.set()

    def recent_end(self, job_id: int) -> tuple[float, _Reply] | None:
        """The end of job ``job_id`` read for the requests it woke, if recent enough to share."""
        shared = self.ended.get(job_id)
        if shared is not None and time.monotonic() - shared[0] < SHARED_FOR:
            return shared
        return None


class FreshReads(Generic[_Reply]):
    """Reads of a job by many event streams at once, one read for those it is fresh enough for.

    A change of a job wakes every stream following it. A stream asks for the job
    as read no earlier than ``since`` (when it was woken): a read of that job
    begun since then is as good as its own, so it waits for that read and takes
    its answer; otherwise it reads, and the streams woken before its read began
    may take its answer in turn. No stream ever takes a read begun before it was
    woken, so none misses the change that woke it.

    :param read: reads job ``job_id`` as it is now.
    """

    def __init__(self, read: Callable[[int], _Reply]) -> None:
        self._read = read
        self._lock = threading.Lock()
        #: The newest read in flight of each job: when it began, and its outcome once known.
        self.reading: dict[int, _Flight[_Reply]] = {}

    def read(self, job_id: int, since: float) -> _Reply:
        """Job ``job_id`` as read at ``since`` (``time.monotonic``) or later."""
        with self._lock:
            flight = self.reading.get(job_id)
            if flight is None or flight.began < since:
                flight, leader = _Flight(time.monotonic()), True
                self.reading[job_id] = flight
            else:
                leader = False
        if not leader:
            flight.done.wait()
            if flight.failed:
                return self._read(job_id)
            return flight.reply  # type: ignore[return-value]  # set before done
        try:
            flight.reply = self._read(job_id)
        except BaseException:
            flight.failed = True
            raise
        finally:
            with self._lock:
                if self.reading.get(job_id) is flight:
                    del self.reading[job_id]
            flight.done.set()
        return flight.reply


class _Flight(Generic[_Reply]):
    """One read in flight: when it began, and what it read."""

    def __init__(self, began: float) -> None:
        self.began = began
        self.done = threading.Event()
        self.reply: _Reply | None = None
        self.failed = False
