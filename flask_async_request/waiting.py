"""Long polls that cost the database nothing while they wait.

Every request waiting on a job (``Prefer: wait=N``) registers here and sleeps
on an event of its own, holding no database connection. One thread per process
wakes them:

* on PostgreSQL with psycopg, a listener on one connection of its own, which
  LISTENs for the NOTIFY that every ending statement sends and wakes the
  requests waiting on that job;
* elsewhere, a poller that asks, every :data:`POLL_INTERVAL`, which of all the
  waited-on jobs have ended or gone, in one query for all of them.

So a thousand waiting requests cost one connection (or one query per
interval), not a thousand.

Event streams *watch* a job instead: they are woken by any change, not only
its end. On PostgreSQL the same listener hears the changes announced as
:class:`Changed` ids (a progress write, a retry) and the ends; a second thread
reads those jobs, all those announced meanwhile in one query, and then wakes
their streams, which find the job read for them. Elsewhere the poller asks, in
one more query per interval, which of the watched jobs changed. A stream's wait
until its next heartbeat is untimed until its last second: a ticker thread
ends it then (see :meth:`Waiters.sleep`).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

logger = logging.getLogger("flask_async_request")

#: Seconds between two checks of the poller, where there is no LISTEN.
POLL_INTERVAL = 0.1
#: Seconds the listener blocks for notifications before it looks around.
LISTEN_SLICE = 1.0
#: Longest wait of the first waiter for the listener to listen (seconds).
READY_TIMEOUT = 5.0
#: Longest pause before the listener connects again after losing its connection.
MAX_RECONNECT_DELAY = 5.0
#: Seconds between two looks of the ticker, which ends the watchers' long waits (see
#: :meth:`Waiters.sleep`); a wait shorter than twice this is timed.
TICK = 0.5

#: Opens a connection that LISTENs; it gives a function yielding the ids of the jobs
#: that end within a timeout, each as soon as it is announced.
Listen = Callable[[], AbstractContextManager[Callable[[float], Iterable[int]]]]
#: Of the ids given, those whose jobs have ended or no longer exist.
Check = Callable[[list[int]], Iterable[int]]
#: Reads the jobs of the ids given for their watchers; when that read began.
Refresh = Callable[[list[int]], float]


class Wake(threading.Event):
    """A waiter's event, which also tells when it was last set (``time.monotonic``).

    A read of the job begun since then sees what the wake announced: the
    streams a change woke together may share one (see ``shared_reads.FreshReads``).
    """

    def __init__(self) -> None:
        super().__init__()
        #: When the event was last set; 0 before that.
        self.at = 0.0
        #: When the ticker is to set it, if nothing did (``time.monotonic``): see
        #: :meth:`Waiters.sleep`.
        self.due = _NEVER
        #: Whether the ticker set it: any other set is a change.
        self.ticked = False

    def set_at(self, at: float) -> None:
        """Set the event, woken at ``at``."""
        self.at = at
        self.set()


_NEVER = float("inf")


class Changed(int):
    """An announced job id that changed without ending: it wakes watchers, not long polls."""

    __slots__ = ()


class Waiters:
    """The requests of one process waiting for jobs to end, and the thread that wakes them.

    :param listen: where the database can announce ends (PostgreSQL's LISTEN):
        a context manager opening such a connection, which gives a function
        returning the ids announced within a timeout.
    :param check: elsewhere: a query telling which of the given job ids have
        ended or gone.
    :param changes: with ``check``: a query telling which of the given job ids
        have changed (or ended, or gone) since it was last asked about them; a
        job it is asked about for the first time counts as changed. Without it,
        watchers are woken at ends only.
    :param refresh: with ``listen``: reads the given watched jobs, which changed
        or ended, for their watchers to share, and tells when that read began
        (``time.monotonic``). A thread of its own calls it, with every job
        announced meanwhile, then wakes their watchers as of that time; the
        listener goes on at once, and long polls are woken as ends arrive.
    """

    def __init__(
        self,
        *,
        listen: Listen | None = None,
        check: Check | None = None,
        changes: Check | None = None,
        refresh: Refresh | None = None,
    ) -> None:
        if (listen is None) == (check is None):
            raise ValueError("Waiters needs exactly one of listen= and check=.")
        self._listen = listen
        self._check = check
        self._changes = changes
        self._refresh = refresh if listen is not None else None
        #: The watched jobs announced since the last refresh, and the event that says there are.
        self._to_refresh: set[int] = set()
        self._refresh_due = threading.Event()
        self._lock = threading.Lock()
        self._waiting: dict[int, set[Wake]] = {}
        #: The event streams' events, woken by any change of their job.
        self._watching: dict[int, set[Wake]] = {}
        self._someone_waits = threading.Event()
        #: Set once the thread listens (or polls): waiters registered after it miss nothing.
        self._ready = threading.Event()
        self._pid: int | None = None
        self._ticker_pid: int | None = None

    @contextmanager
    def waiting_for(self, job_id: int) -> Iterator[Wake]:
        """Register a waiter for job ``job_id``: an event set when the job may have ended.

        The event can also be set for no reason (after a lost connection, every
        waiter is woken to look again): the caller reads the job, and waits on
        again if it is still pending.
        """
        with self._registered(self._waiting, job_id) as event:
            yield event

    @contextmanager
    def watching(self, job_id: int) -> Iterator[Wake]:
        """Register a watcher of job ``job_id``: an event set when the job may have changed.

        As for :meth:`waiting_for`, the event may be set for no reason: the
        caller reads the job and compares.
        """
        with self._registered(self._watching, job_id) as event:
            yield event

    @contextmanager
    def _registered(self, table: dict[int, set[Wake]], job_id: int) -> Iterator[Wake]:
        event = Wake()
        with self._lock:
            started = self._start_if_needed()
        if started:
            # The first waiter of the process waits for the listener to listen, so
            # no end announced before it could be missed.
            self._ready.wait(READY_TIMEOUT)
        with self._lock:
            table.setdefault(job_id, set()).add(event)
            self._someone_waits.set()
        try:
            yield event
        finally:
            with self._lock:
                events = table.get(job_id)
                if events is not None:
                    events.discard(event)
                    if not events:
                        del table[job_id]
                if not self._waiting and not self._watching:
                    self._someone_waits.clear()

    def sleep(self, event: Wake, timeout: float) -> bool:
        """Wait on a watcher's ``event`` up to ``timeout`` seconds; whether a change woke it.

        A timed wait costs an allocation that outlives it (gevent's ``Timeout``, a
        thread's lock): with thousands of streams woken each second, enough to make
        full garbage collections frequent. So a long wait is untimed: the ticker, a
        thread of this process, sets the event when the wait nears its end, and the
        rest (under ``2 * TICK``) is timed.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining < 2 * TICK:
                return event.wait(max(remaining, 0.0))
            if self._ticker_pid != os.getpid():  # Checked again under the lock.
                with self._lock:
                    self._start_ticker_if_needed()
            event.due = deadline - 2 * TICK
            event.wait()
            event.due = _NEVER
            # Set by anyone but the ticker, it was a change, whatever its ``at`` says
            # (a stream zeroes ``at`` as it reads, unlocked: a change may land between).
            if not event.ticked:
                return True
            event.ticked = False
            # The ticker sets only an event that was not set; a change after that
            # sets ``at`` before the event.
            if event.at:
                return True
            event.clear()
            if event.at:
                return True

    @property
    def count(self) -> int:
        """How many requests wait now (long polls and streams)."""
        with self._lock:
            return sum(len(events) for events in self._waiting.values()) + sum(
                len(events) for events in self._watching.values()
            )

    def wake(self, job_ids: Iterable[int]) -> None:
        """Wake the requests waiting on ``job_ids``, which ended, and their watchers."""
        with self._lock:
            at = time.monotonic()
            for job_id in job_ids:
                for event in self._waiting.get(job_id, ()):
                    event.set_at(at)
                for event in self._watching.get(job_id, ()):
                    event.set_at(at)

    def wake_watchers(self, job_ids: Iterable[int], at: float | None = None) -> None:
        """Wake the watchers of ``job_ids``, which changed (long polls wait on).

        :param at: the time of the wake (``time.monotonic``), if not now: a read
            begun then sees the change.
        """
        with self._lock:
            if at is None:
                at = time.monotonic()
            for job_id in job_ids:
                for event in self._watching.get(job_id, ()):
                    event.set_at(at)

    def _wake_waiting(self, job_id: int) -> None:
        """Wake the requests waiting for job ``job_id``, which ended (not its watchers)."""
        with self._lock:
            at = time.monotonic()
            for event in self._waiting.get(job_id, ()):
                event.set_at(at)

    def _refresh_later(self, job_id: int) -> None:
        """Have the refresher read job ``job_id`` for its watchers, then wake them."""
        with self._lock:
            if job_id in self._watching:
                self._to_refresh.add(job_id)
                self._refresh_due.set()

    def wake_all(self) -> None:
        """Wake every waiting request, to look again."""
        with self._lock:
            at = time.monotonic()
            for table in (self._waiting, self._watching):
                for events in table.values():
                    for event in events:
                        event.set_at(at)

    def _start_ticker_if_needed(self) -> None:
        """Start the ticker unless it runs in this process (under the lock)."""
        if self._ticker_pid != os.getpid():
            threading.Thread(
                target=self._run_ticker,
                args=(os.getpid(),),
                name="flask-async-request-ticker",
                daemon=True,
            ).start()
            # Only once it runs: a thread that could not start is started by the next wait.
            self._ticker_pid = os.getpid()

    def _run_ticker(self, pid: int) -> None:
        """Set the events of the watchers whose untimed wait is due, every :data:`TICK`."""
        while True:
            self._someone_waits.wait()
            time.sleep(TICK)
            with self._lock:
                # Started under the lock, which saw its pid stored before this.
                if self._ticker_pid != pid:
                    return
                now = time.monotonic()
                for events in self._watching.values():
                    for event in events:
                        if event.due <= now and not event.is_set():
                            event.due = _NEVER
                            event.ticked = True
                            event.set()

    def _start_if_needed(self) -> bool:
        """Start the waking thread unless it runs in this process; whether it was started."""
        # One thread per process; a forked child starts its own.
        if self._pid == os.getpid():
            return False
        self._pid = os.getpid()
        self._waiting.clear()
        self._watching.clear()
        self._ready.clear()
        self._to_refresh.clear()
        target = self._run_listener if self._listen is not None else self._run_poller
        threading.Thread(target=target, name="flask-async-request-waiters", daemon=True).start()
        if self._refresh is not None:
            threading.Thread(
                target=self._run_refresher, name="flask-async-request-refresher", daemon=True
            ).start()
        return True

    def _run_listener(self) -> None:
        assert self._listen is not None
        pid, delay = os.getpid(), 0.1
        while self._pid == pid:
            try:
                with self._listen() as announced:
                    if self._ready.is_set():
                        # Reconnected: anything may have ended while no one listened.
                        self.wake_all()
                    self._ready.set()
                    delay = 0.1
                    while self._pid == pid:
                        # Each end wakes its waiters as it arrives, not at the slice's end.
                        for job_id in announced(LISTEN_SLICE):
                            if self._refresh is not None:
                                if not isinstance(job_id, Changed):
                                    self._wake_waiting(job_id)
                                self._refresh_later(job_id)
                            elif isinstance(job_id, Changed):
                                self.wake_watchers((job_id,))
                            else:
                                self.wake((job_id,))
            except Exception:
                logger.warning(
                    "The long-poll listener lost its connection; reconnecting in %.1f s.",
                    delay,
                    exc_info=True,
                )
                self.wake_all()
                time.sleep(delay)
                delay = min(delay * 2, MAX_RECONNECT_DELAY)

    def _run_refresher(self) -> None:
        """Read the announced jobs for their watchers, all those announced meanwhile at once."""
        assert self._refresh is not None
        pid = os.getpid()
        while self._pid == pid:
            self._refresh_due.wait()
            with self._lock:
                self._refresh_due.clear()
                job_ids = [job_id for job_id in self._to_refresh if job_id in self._watching]
                self._to_refresh.clear()
            if not job_ids:
                continue
            at = time.monotonic()
            try:
                at = self._refresh(job_ids)
            except Exception:
                # Woken all the same: each reads for itself, and tells its client if it cannot.
                logger.warning("Reading the changed jobs for their streams failed.", exc_info=True)
            self.wake_watchers(job_ids, at)

    def _run_poller(self) -> None:
        assert self._check is not None
        pid = os.getpid()
        self._ready.set()
        while self._pid == pid:
            self._someone_waits.wait()
            time.sleep(POLL_INTERVAL)
            with self._lock:
                ids = list(self._waiting)
                watched = list(self._watching)
            try:
                if ids:
                    self.wake(self._check(ids))
                if watched:
                    if self._changes is not None:
                        self.wake_watchers(self._changes(watched))
                    else:
                        self.wake_watchers(self._check(watched))
            except Exception:
                logger.warning("The long-poll check failed; waking every waiter.", exc_info=True)
                self.wake_all()


def read_when_done(
    waiters: Waiters,
    job_id: int,
    timeout: float,
    read: Callable[[], Any],
    done: Callable[[Any], bool],
    reread: Callable[[], Any] | None = None,
) -> Any:
    """What ``read`` gives once job ``job_id`` is ``done``, waiting up to ``timeout`` seconds.

    ``read`` is called once before waiting (a job already done answers at
    once); ``reread`` (default ``read``) once per wake, never while nothing
    happens.
    """
    deadline = time.monotonic() + timeout
    reader = read
    with waiters.waiting_for(job_id) as woken:
        while True:
            # Cleared before the read, so an end announced after it still wakes us.
            woken.clear()
            current = reader()
            reader = reread or read
            remaining = deadline - time.monotonic()
            if done(current) or remaining <= 0:
                return current
            if not woken.wait(remaining):
                # The deadline: as the job is now (it may even be gone).
                return read()


#: The former name of :func:`read_when_done`, which the store still imports.
wait_for = read_when_done
