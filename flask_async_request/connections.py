"""Pooled connections that threads keep between the store's one-row statements.

A claim, a reply or a poll is one short statement; taking a connection from
SQLAlchemy's pool and giving it back costs a good part of what the statement
itself costs the client. A thread keeps the connection it took instead, for
its next statements (a worker's next claim and reply, a web thread's next
poll), up to a limit of threads; the others take and give back as before.

What a pool would have done still happens: a thread that ends (a thread made
per request, a greenlet made per job) gives its connection back; a lost
connection is dropped, and with it every connection kept by the other threads
(after a database restart they are all stale); a forked child never uses one
its parent kept.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sqlalchemy.pool import PoolProxiedConnection


class _Kept:
    """One thread's connection; given back to its pool when the thread ends."""

    def __init__(
        self,
        connection: PoolProxiedConnection,
        generation: int,
        given_back: Callable[[], None],
    ) -> None:
        self.connection = connection
        self.generation = generation
        #: The thread's cursor on it, made at its first statement and used for the
        #: next: a cursor made and closed for each costs a claim more than binding it.
        self.cursor: Any = None
        #: When the pool handed it out (``time.monotonic``).
        self.since = time.monotonic()
        # Not a method of self: the finalizer must not keep self alive.
        self._finalizer = weakref.finalize(self, _give_back, connection, given_back)

    def give_back(self, *, drop: bool = False, error: BaseException | None = None) -> None:
        """Return the connection to its pool now, closed first with ``drop`` (for ``error``)."""
        if drop:
            self.connection.invalidate(error)
        self._finalizer()


def _give_back(connection: PoolProxiedConnection, given_back: Callable[[], None]) -> None:
    try:
        connection.close()
    finally:
        given_back()


class KeptConnections:
    """The connections threads keep from one pool, at most ``limit`` at a time.

    :param checkout: takes a connection from the pool (``Engine.raw_connection``).
    :param limit: how many threads may keep one; fewer than the pool holds, so
        that statements of other threads, and a keeping thread's own other
        statements, still find a connection in it.
    :param max_age: seconds a thread keeps one before it goes back to the pool,
        whose checkout then recycles it past the same age (``pool_recycle``);
        ``None``: no limit.
    """

    def __init__(
        self,
        checkout: Callable[[], PoolProxiedConnection],
        limit: int,
        max_age: float | None = None,
    ) -> None:
        self._checkout = checkout
        self.limit = limit
        self.max_age = max_age
        self._kept = 0
        # Reentrant: a finalizer run by the garbage collector may give back in its midst.
        self._lock = threading.RLock()
        self._local = threading.local()
        self._pid = os.getpid()
        #: Bumped when every kept connection is to be dropped; see :meth:`drop_all`.
        self._generation = 0

    @property
    def kept(self) -> int:
        """How many threads keep a connection now."""
        return self._kept

    def take(self) -> tuple[PoolProxiedConnection, bool]:
        """A connection for one statement, and whether the thread keeps it.

        One kept is not to be closed after the statement; one not kept is.
        """
        if os.getpid() != self._pid:
            # A forked child: what its parent kept is the parent's.
            return self._checkout(), False
        kept: _Kept | None = getattr(self._local, "kept", None)
        if kept is not None:
            if kept.generation != self._generation:
                self.drop()  # lost with the others: closed, whatever its age
            elif self.max_age is not None and time.monotonic() - kept.since >= self.max_age:
                # Old, not lost: back to the pool, which recycles it at its checkout.
                self._local.__dict__.pop("kept").give_back()
            else:
                return kept.connection, True
        connection = self._checkout()
        with self._lock:
            if self._kept >= self.limit:
                return connection, False
            self._kept += 1
        self._local.kept = _Kept(connection, self._generation, self._given_back)
        return connection, True

    def cursor(self) -> Any:
        """A cursor of the connection this thread keeps, the same from one statement to the next.

        Only after :meth:`take` said the thread keeps its connection. The
        cursor holds the last statement's rows until the next one.
        """
        kept: _Kept = self._local.kept
        if kept.cursor is None:
            kept.cursor = kept.connection.cursor()
        return kept.cursor

    def _given_back(self) -> None:
        with self._lock:
            self._kept -= 1

    def drop(self, error: BaseException | None = None) -> None:
        """Close and give back the connection this thread keeps (lost by ``error``, or stale)."""
        kept: _Kept | None = self._local.__dict__.pop("kept", None)
        if kept is not None:
            kept.give_back(drop=True, error=error)

    def drop_all(self, error: BaseException | None = None) -> None:
        """Have every thread drop its connection before its next statement; this one's now."""
        with self._lock:
            self._generation += 1
        self.drop(error)
