"""Leases of running jobs, renewed from one daemon thread per process."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

from . import lifecycle

if TYPE_CHECKING:
    from .store import JobStore

logger = logging.getLogger("flask_async_request")

#: The longest the renewal thread sleeps when nothing is held.
_IDLE_WAIT = 60.0


@dataclass
class _Held:
    store: JobStore
    attempt: int
    lease: timedelta
    renew_at: float  # time.monotonic()
    #: When the job's time limit runs out (time.monotonic()), and what to do then.
    deadline: float | None = None
    on_deadline: Callable[[], None] | None = None


class LeaseKeeper:
    """Keeps the leases of the jobs this process is running from running out.

    A held job's lease is renewed every third of its length; a worker process
    that dies stops renewing, and the sweeper finds the lease expired. A job that
    finishes within a third of its lease costs no renewal at all. Renewals are
    fenced by the job's attempt number, so a worker that lost its job to another
    never extends the other's lease.

    The same thread watches the held jobs' time limits: at a job's deadline it
    calls the function the runner gave (which fails the job and stops its work).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[tuple[int, int], _Held] = {}
        self._wake = threading.Event()
        self._next_wake = float("inf")
        self._pid: int | None = None
        #: The shortest time between two renewals of a job held in this process:
        #: how long the thread sleeps when it holds none (see :meth:`hold`).
        self._period = _IDLE_WAIT

    def hold(
        self,
        store: JobStore,
        job_id: int,
        attempt: int,
        lease: timedelta,
        *,
        time_limit: float | None = None,
        on_deadline: Callable[[], None] | None = None,
    ) -> None:
        """Renew job ``job_id``'s lease (just set by its claim) until :meth:`release`.

        :param time_limit: seconds from now after which ``on_deadline`` is called,
            once, from the keeper's thread, unless the job was released before.
        """
        now = time.monotonic()
        period = lease.total_seconds() / 3
        renew_at = now + period
        deadline = None if time_limit is None else now + time_limit
        held = _Held(store, attempt, lease, renew_at, deadline, on_deadline)
        wake_at = renew_at if deadline is None else min(renew_at, deadline)
        with self._lock:
            self._held[(id(store), job_id)] = held
            # An idle thread wakes after one period, before any job held since
            # then is due: holding a job does not wake it (the thread's switch
            # would cost a short job more than its two statements).
            self._period = min(self._period, period)
            if self._pid != os.getpid():
                # First use in this process (or in a forked child): the thread runs here.
                self._pid = os.getpid()
                self._next_wake = wake_at
                threading.Thread(
                    target=self._run, name="flask-async-request-leases", daemon=True
                ).start()
            elif wake_at < self._next_wake:
                self._wake.set()

    def release(self, store: JobStore, job_id: int) -> None:
        """Stop renewing job ``job_id``'s lease."""
        with self._lock:
            self._held.pop((id(store), job_id), None)

    def give_up(self, store: JobStore) -> list[int]:
        """Stop renewing the leases held on ``store`` and end them now: their process stops.

        The jobs are then lost, as if their worker had died: the next sweep runs
        them again or fails them by the retry rules, and a reply their threads
        store meanwhile is still taken.

        :returns: the ids of the jobs given up.
        """
        with self._lock:
            mine = [(key, held) for key, held in self._held.items() if held.store is store]
            for key, _ in mine:
                del self._held[key]
        given_up = []
        for (_, job_id), held in mine:
            if lifecycle.give_up(store, job_id, held.attempt):
                logger.warning(
                    "Job %s: stopped while running; its lease is ended, so it runs again or"
                    " fails by ASYNC_REQUEST_RETRY at the next sweep.",
                    job_id,
                )
                given_up.append(job_id)
        return given_up

    def _run(self) -> None:
        pid = os.getpid()
        while self._pid == pid:
            with self._lock:
                now = time.monotonic()
                due = [(key, held) for key, held in self._held.items() if held.renew_at <= now]
                for _, held in due:
                    held.renew_at = now + held.lease.total_seconds() / 3
                expired = []
                for (_, job_id), held in self._held.items():
                    if held.deadline is not None and held.deadline <= now:
                        held.deadline = None  # once
                        if held.on_deadline is not None:
                            expired.append((job_id, held.on_deadline))
                upcoming = [held.renew_at for held in self._held.values()]
                upcoming += [h.deadline for h in self._held.values() if h.deadline is not None]
                self._next_wake = min(upcoming, default=now + self._period)
                self._wake.clear()
            for job_id, on_deadline in expired:
                try:
                    on_deadline()
                except Exception:
                    logger.exception("Job %s: could not end it at its time limit.", job_id)
            for (_, job_id), held in due:
                self._renew(held.store, job_id, held.attempt, held.lease)
            self._wake.wait(max(self._next_wake - time.monotonic(), 0.01))

    @staticmethod
    def _renew(store: JobStore, job_id: int, attempt: int, lease: timedelta) -> None:
        try:
            lifecycle.renew(store, job_id, attempt, lease)
        except Exception:
            logger.warning("Could not renew the lease of job %s.", job_id, exc_info=True)


#: The lease keeper of this process.
keeper = LeaseKeeper()
