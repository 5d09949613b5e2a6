"""One read of a job's row for all the long polls its end woke, and for all its event streams.

An end wakes every request waiting on that job at once: a thousand of them
reading the same row at the same moment would be a thousand queries for one
answer. The first woken request reads the row; the others wait for that read
and, when it found the job ended, take its answer. A pending answer is never
shared: it could be stale, and they read again. Event streams share any read
begun since their wake (:class:`FreshReads`). Imports nothing of the package.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, Generic, TypeVar

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
    begun since then, in flight or done, is as good as its own, so it takes that
    read's answer (waiting for it if need be); otherwise it reads, and the streams
    woken before its read began take its answer in turn. No stream ever takes a
    read begun before it was woken, so none misses the change that woke it.

    A read is kept once done, so that streams woken together but run later, when
    it has ended, still share it; the reads begun more than :data:`SHARED_FOR`
    ago are forgotten. Each read also keeps what its takers derive from its
    answer (an event's encoded data), made once for all of them: see
    :meth:`Read.shared`.

    :param read: reads job ``job_id`` as it is now.
    :param read_many: reads several jobs as they are now, in one go; a job not
        in its answer reads as ``None`` (gone). Needed by :meth:`refresh`.
    """

    def __init__(
        self,
        read: Callable[[int], _Reply],
        read_many: Callable[[list[int]], Mapping[int, _Reply]] | None = None,
    ) -> None:
        self._read = read
        self._read_many = read_many
        self._lock = threading.Lock()
        #: The newest read of each job, in flight or done: when it began, its outcome once known.
        self.reading: dict[int, Read[_Reply]] = {}
        self._pruned_at = time.monotonic()

    def read(self, job_id: int, since: float) -> _Reply:
        """Job ``job_id`` as read at ``since`` (``time.monotonic``) or later."""
        return self.take(job_id, since).reply  # type: ignore[return-value]  # set once done

    def take(self, job_id: int, since: float) -> Read[_Reply]:
        """A read of job ``job_id`` begun at ``since`` (``time.monotonic``) or later, done."""
        with self._lock:
            flight = self.reading.get(job_id)
            if flight is None or flight.began < since or flight.failed:
                now = time.monotonic()
                flight, leader = Read(now), True
                self.reading[job_id] = flight
                if now - self._pruned_at >= SHARED_FOR:
                    self._prune(now)
            else:
                leader = False
        if not leader:
            flight.done.wait()
            if flight.failed:
                # Not shared: this stream reads for itself, as it would have alone.
                own: Read[_Reply] = Read(time.monotonic())
                own.reply = self._read(job_id)
                own.done.set()
                return own
            return flight
        try:
            flight.reply = self._read(job_id)
        except BaseException:
            flight.failed = True
            with self._lock:
                if self.reading.get(job_id) is flight:
                    del self.reading[job_id]
            raise
        finally:
            flight.done.set()
        return flight

    def refresh(self, job_ids: list[int]) -> float:
        """Read ``job_ids`` now, in one go, for the streams about to be woken; when it began.

        Called before the streams of jobs that changed are woken, with the time
        returned as their wake's: each of them then finds its job read, done,
        and takes that read without waiting or reading again.

        :raises Exception: what ``read_many`` raises; nothing is kept then.
        """
        assert self._read_many is not None, "FreshReads(read_many=...) refreshes"
        began = time.monotonic()
        replies = self._read_many(job_ids)
        with self._lock:
            for job_id in job_ids:
                newest = self.reading.get(job_id)
                if newest is not None and newest.began > began:
                    continue
                done: Read[_Reply] = Read(began)
                done.reply = replies.get(job_id)
                done.done.set()
                self.reading[job_id] = done
            if time.monotonic() - self._pruned_at >= SHARED_FOR:
                self._prune(time.monotonic())
        return began

    def _prune(self, now: float) -> None:
        """Forget the reads done and begun :data:`SHARED_FOR` ago or more (under the lock)."""
        self._pruned_at = now
        self.reading = {
            job_id: flight
            for job_id, flight in self.reading.items()
            if now - flight.began < SHARED_FOR or not flight.done.is_set()
        }


_Made = TypeVar("_Made")


class Read(Generic[_Reply]):
    """One read of a job: when it began, what it read, and what its takers derived from it."""

    def __init__(self, began: float) -> None:
        self.began = began
        self.done = threading.Event()
        self.reply: _Reply | None = None
        self.failed = False
        self._derived: dict[Hashable, Any] = {}

    def shared(self, key: Hashable, make: Callable[[], _Made]) -> _Made:
        """What ``make`` gives, made once per read and ``key`` for every taker of this read.

        ``make`` must depend only on the read's answer and on what ``key`` names.
        """
        try:
            made: _Made = self._derived[key]
        except KeyError:
            made = self._derived[key] = make()
        return made
