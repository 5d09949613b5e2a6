"""Where the jobs table is reached: pooled autocommit connections, and the status reads.

Polls, claims, replies and lease renewals are single statements run many
times per job (the statements are named in :mod:`.statements`). Through the ORM
session each would open a transaction and end it (two more round trips) and
pay for building the statement again; here each is compiled once and, on a
network database, runs on a connection in autocommit mode from a small pool of
its own, so no BEGIN, COMMIT or ROLLBACK is ever sent for them; a thread keeps
its connection from one statement to the next (see :mod:`.connections`).
SQLite, where there is no network to save, uses the app's engine.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from .compat import Precompiled, precompile
from .connections import KeptConnections
from .exceptions import DatabaseUnavailable, InvalidJobRow
from .models import Job, JobStatus
from .shared_reads import FreshReads, SharedReads
from .statements import (
    CHANGED_PREFIX,
    CHANNEL,
    INSERT,
    PENDING_OF,
    REPLIES_OF,
    REPLY,
    STATES_OF,
    NewRow,
    Statement,
    is_hot,
)
from .statements import JobReply as JobReply
from .waiting import Changed, Waiters, wait_for

if TYPE_CHECKING:
    from flask import Flask
    from sqlalchemy.engine import Engine
    from sqlalchemy.orm import Session

logger = logging.getLogger("flask_async_request")

_Result = TypeVar("_Result")


#: Ids per query of the long polls' check.
_CHECK_BATCH = 500


#: The pause before the second try again of a statement whose connection was lost;
#: each next pause doubles, up to :data:`LONGEST_PAUSE`.
FIRST_PAUSE = 0.05
#: The longest pause between two tries: a database back from a restart is found within it.
LONGEST_PAUSE = 1.0


def lost_connection(error: BaseException) -> bool:
    """Whether ``error`` says the database was out of reach, not that it refused the statement.

    A connection lost (its backend terminated, the server restarted), refused
    or reset is worth the same statement again on a fresh connection, and so
    is whatever else DB-API calls an ``OperationalError`` or an
    ``InterfaceError`` (a deadlock, a timeout, too many connections). A value,
    a constraint or SQL the database refused (``DataError``, ``IntegrityError``,
    ``ProgrammingError``) is not: it would be refused again.
    """
    return isinstance(error, sa.exc.DBAPIError) and (
        error.connection_invalidated
        or isinstance(error, (sa.exc.OperationalError, sa.exc.InterfaceError))
    )


def _reason(error: sa.exc.DBAPIError) -> str:
    """The driver's error, one line, for the log."""
    text = str(error.orig).strip().splitlines()
    return f"{type(error.orig).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


#: Seconds a connection to MariaDB or MySQL is pooled before a new one replaces it,
#: unless ``SQLALCHEMY_ENGINE_OPTIONS`` says: Flask-SQLAlchemy's own default there.
MYSQL_POOL_RECYCLE = 7200
#: What a ``TEXT`` column of MariaDB and MySQL holds: 65,535 bytes.
MYSQL_TEXT_BYTES = 65_535


class Unreachable:
    """Raise :class:`DatabaseUnavailable` for a lost connection inside ``with``; others as they are.

    One object serves any number of ``with`` blocks.
    """

    def __init__(self, what: str) -> None:
        #: What could not be done: the start of the error's sentence.
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: object, error: BaseException | None, traceback: object) -> None:
        if isinstance(error, sa.exc.DBAPIError) and lost_connection(error):
            raise DatabaseUnavailable(f"{self.what}: the database is out of reach.") from error


def _reply_of(job_id: int, row: Sequence[Any]) -> JobReply:
    """Job ``job_id``'s reply columns as read (:data:`.statements.REPLY_COLUMNS`).

    :raises InvalidJobRow: the row's status is not a :class:`JobStatus`.
    """
    uid, owner, status, *rest = row
    try:
        known = JobStatus(status)
    except ValueError:
        raise InvalidJobRow(
            f"Job {job_id} has the status {status!r}, which is not one of"
            f" {', '.join(s.value for s in JobStatus)}.",
            job_id,
        ) from None
    return JobReply(uid, owner, known, *rest)


def _ended_or_gone(reply: JobReply | None) -> bool:
    return reply is None or reply.status.finished


class JobStore:
    """Runs the hot paths' statements for one app in one process."""

    def __init__(
        self,
        engine: Engine,
        *,
        autocommit: bool = False,
        keep: int = 0,
        keep_for: float | None = None,
    ) -> None:
        """:param keep: how many threads may keep a connection between statements.

        :param keep_for: seconds each may be kept (the pool's ``pool_recycle``).
        """
        self.engine = engine
        #: Whether statements commit on their own (a network database's own pool).
        self.autocommit = autocommit
        self.pid = os.getpid()
        #: Whether statements run on PostgreSQL, each in its own transaction.
        self.postgresql = autocommit and engine.dialect.name == "postgresql"
        #: Whether an UPDATE can hand back the changed row (not on MariaDB or MySQL).
        self.returning = bool(engine.dialect.update_returning)
        #: The bytes of UTF-8 a text column holds, where it holds fewer than any
        #: reply kept in a row might need: MariaDB's and MySQL's ``TEXT``.
        self.text_capacity: int | None = (
            MYSQL_TEXT_BYTES if engine.dialect.name in ("mysql", "mariadb") else None
        )
        # The poll runs its compiled SQL on a raw DBAPI cursor: SQLAlchemy's
        # execution layer costs more than the query itself there.
        self._reply_sql = REPLY.compile(dialect=engine.dialect).string
        self._positional = bool(engine.dialect.positional)
        self._dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self._kept = KeptConnections(engine.raw_connection, keep, keep_for) if keep > 0 else None
        #: On PostgreSQL with psycopg 3, a job's end is announced with NOTIFY, and
        #: long polls LISTEN instead of polling.
        self.listen = engine.dialect.name == "postgresql" and engine.dialect.driver == "psycopg"
        #: Hot statements precompiled for this engine, by id; see :func:`hot`. Only
        #: autocommitted psycopg connections to PostgreSQL run them raw.
        self._precompiled: dict[int, Precompiled | None] | None = (
            {} if autocommit and self.listen else None
        )
        self._waiters: Waiters | None = None
        self._waiters_lock = threading.Lock()
        #: What the watched jobs' rows held at the last check, where no LISTEN tells.
        self._seen: dict[int, tuple[Any, ...]] = {}
        #: The reads of ended jobs' rows, shared by the requests their end woke.
        self.shared_reads = SharedReads(lambda job_id: self.fetch_reply(job_id), _ended_or_gone)
        #: The reads of followed jobs' rows, one for the event streams a change woke.
        self.fresh_reads = FreshReads(
            lambda job_id: self.fetch_reply(job_id), lambda ids: self.fetch_replies(ids)
        )

    @classmethod
    def for_app(cls, app: Flask, engine: Engine) -> JobStore:
        """A store for ``app``'s jobs table, reached through ``engine`` (its default engine)."""
        if engine.dialect.name == "sqlite":
            # No round trips to save, and a second engine would not see an
            # in-memory database.
            return cls(engine)
        options: dict[str, Any] = dict(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
        options.pop("isolation_level", None)
        if engine.dialect.name in ("mysql", "mariadb"):
            # Flask-SQLAlchemy's default for MySQL and MariaDB, whose servers close
            # connections idle for wait_timeout (8 hours by default).
            options.setdefault("pool_recycle", MYSQL_POOL_RECYCLE)
        autocommit = sa.create_engine(
            engine.url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, **options
        )
        pool = autocommit.pool
        # Threads keep fewer connections than the pool holds, and none where each
        # checkout is to ping the database first; a kept one goes back to the pool
        # when its recycling age has come.
        keep = 0
        if isinstance(pool, sa.pool.QueuePool) and not options.get("pool_pre_ping"):
            keep = pool.size() - 1
        recycle = options.get("pool_recycle", -1)
        max_age = float(recycle) if recycle is not None and recycle >= 0 else None
        return cls(autocommit, autocommit=True, keep=keep, keep_for=max_age)

    def again_if_lost(self, run: Callable[[bool], _Result], *, within: float, what: str) -> _Result:
        """``run(False)``; after a lost connection, ``run(True)`` on a fresh one, for ``within`` s.

        The first try again is at once: a connection that died in the pool is
        the usual loss, and the pool has dropped its kind. The next ones pause
        :data:`FIRST_PAUSE`, doubling up to :data:`LONGEST_PAUSE`, until
        ``within`` seconds have passed since the first try. ``run`` is told
        whether a try was lost before: a lost try may have done its work all the
        same, which a try again that finds nothing to change must check. Errors
        other than a lost connection (see :func:`lost_connection`) propagate
        as they are, at once.

        :param what: what is being done, for the log and the error.
        :raises DatabaseUnavailable: the database was still out of reach after
            ``within`` seconds.
        """
        started = time.monotonic()
        pause = 0.0
        tries = 0
        while True:
            try:
                return run(tries > 0)
            except sa.exc.DBAPIError as e:
                if not lost_connection(e):
                    raise
                tries += 1
                left = started + within - time.monotonic()
                if tries > 1 and left <= 0:
                    # The driver's text is the log's (and the cause's), not the message's:
                    # a job's reply may carry the message to a client.
                    raise DatabaseUnavailable(
                        f"{what}: the database was out of reach, {tries} tries in"
                        f" {time.monotonic() - started:.1f} s."
                    ) from e
                if tries == 1:
                    logger.warning(
                        "%s: its connection was lost (%s); trying again.", what, _reason(e)
                    )
            time.sleep(max(min(pause, left), 0.0))
            pause = min(max(pause * 2, FIRST_PAUSE), LONGEST_PAUSE)

    def fetch_reply(self, job_id: int) -> JobReply | None:
        """The reply columns of job ``job_id``, or ``None`` when there is no such row.

        :raises sqlalchemy.exc.DBAPIError: the database could not be reached or queried.
        :raises InvalidJobRow: the row's status is not a :class:`JobStatus`.
        """
        params: Any = (job_id,) if self._positional else {"job_id": job_id}
        row = self._raw(self._reply_sql, params)
        return None if row is None else _reply_of(job_id, row)

    def fetch_replies(self, job_ids: list[int]) -> dict[int, JobReply]:
        """The reply columns of the jobs ``job_ids`` that exist, by id: one query per batch.

        :raises sqlalchemy.exc.DBAPIError: the database could not be reached or queried.
        :raises InvalidJobRow: a row's status is not a :class:`JobStatus`.
        """
        replies: dict[int, JobReply] = {}
        for start in range(0, len(job_ids), _CHECK_BATCH):
            batch = job_ids[start : start + _CHECK_BATCH]
            for job_id, *row in self.all(REPLIES_OF, {"job_ids": batch}):
                replies[job_id] = _reply_of(job_id, row)
        return replies

    def _raw(self, sql: str, params: Any, *, rowcount: bool = False, binary: bool = False) -> Any:
        """Run compiled ``sql`` on a raw pooled DBAPI cursor; its first row (or its rowcount).

        SQLAlchemy's execution layer costs more than these one-row statements
        themselves; driver errors are still raised as SQLAlchemy's. The thread
        keeps the connection for its next statement, where it may.
        """
        kept = False
        try:
            if self._kept is None:
                connection = self.engine.raw_connection()
            else:
                connection, kept = self._kept.take()
        except self._dbapi_error as e:
            # The pool hands out unwrapped driver errors.
            raise sa.exc.DBAPIError.instance(None, None, e, self._dbapi_error) from e
        cursor = None
        # A kept connection's text cursor serves the thread's next statements too.
        reused = kept and not binary
        try:
            if reused:
                assert self._kept is not None
                cursor = self._kept.cursor()
            else:
                # Binary rows are read on psycopg only, whose cursors take binary=.
                cursor = connection.cursor(binary=True) if binary else connection.cursor()
            try:
                cursor.execute(sql, params)
                return cursor.rowcount if rowcount else cursor.fetchone()
            finally:
                if not reused:
                    cursor.close()
        except self._dbapi_error as e:
            # As SQLAlchemy does: a lost connection is dropped, and so is every idle
            # one of the pool and every one a thread keeps (after a database
            # restart they are all stale); a statement that failed otherwise (a
            # constraint, a timeout) leaves its autocommitted connection as good
            # as it was.
            lost = self.engine.dialect.is_disconnect(
                e,  # type: ignore[arg-type]  # the driver's own Error class
                connection.dbapi_connection,
                cursor,
            )
            if lost:
                if kept:
                    assert self._kept is not None
                    self._kept.drop_all(e)
                else:
                    connection.invalidate(e)
                    if self._kept is not None:
                        self._kept.drop_all()
                self.engine.pool.dispose()
            raise sa.exc.DBAPIError.instance(
                sql, params, e, self._dbapi_error, connection_invalidated=lost
            ) from e
        finally:
            if not kept:
                connection.close()

    def insert(self, row: NewRow) -> int:
        """Store a new job's row in one statement; its id.

        On PostgreSQL with psycopg it is a precompiled ``INSERT ... RETURNING``
        on a raw cursor, autocommitted: the submission's hot path.
        """
        values = row._asdict()
        precompiled = self._hot(INSERT)
        if precompiled is None:
            with self.engine.begin() as conn:
                key = conn.execute(sa.insert(Job), values).inserted_primary_key
            assert key is not None  # An INSERT of one row always has its key.
            return int(key[0])
        return int(self._raw(precompiled.sql, precompiled.params(values))[0])

    def _hot(self, statement: sa.Executable) -> Precompiled | None:
        """``statement`` precompiled, if it is :func:`hot` and this store runs raw statements."""
        if self._precompiled is None:
            return None
        key = id(statement)
        if key in self._precompiled:
            return self._precompiled[key]
        if not is_hot(statement):
            return None
        # None: left to SQLAlchemy, which can run any statement.
        found = self._precompiled[key] = precompile(statement, self.engine.dialect)
        return found

    def first(
        self, statement: sa.Executable, params: dict[str, Any], *, binary: bool = False
    ) -> Any:
        """Run ``statement`` in a transaction of its own; its first row, if any.

        ``binary``: where the statement runs raw (psycopg), its row comes in
        PostgreSQL's binary format. A ``bytea`` comes as it is stored, where the
        text format hex-encodes it on the server and decodes it here: six times
        slower for a chunk of a stored result.
        """
        precompiled = self._hot(statement)
        if precompiled is not None:
            row = self._raw(precompiled.sql, precompiled.params(params), binary=binary)
            return precompiled.row(row)
        with self.engine.begin() as conn:
            return conn.execute(statement, params).first()

    def all(self, statement: sa.Executable, params: dict[str, Any]) -> list[Any]:
        """Run ``statement`` in a transaction of its own; all its rows."""
        with self.engine.begin() as conn:
            return list(conn.execute(statement, params))

    def rowcount(self, statement: sa.Executable, params: dict[str, Any]) -> int:
        """Run the UPDATE or DELETE ``statement`` in a transaction of its own; rows changed."""
        precompiled = self._hot(statement)
        if precompiled is not None:
            return int(self._raw(precompiled.sql, precompiled.params(params), rowcount=True))
        with self.engine.begin() as conn:
            return int(conn.execute(statement, params).rowcount)

    def _form(self, statement: Statement, *, own_transaction: bool = True) -> sa.Executable:
        """The form of ``statement`` this database runs: the one place that decides it.

        PostgreSQL with psycopg announces an end (or a change) in the statement itself; PostgreSQL
        skips the WAL flush wait for a statement in a transaction of its own; a
        database with RETURNING hands back the changed row; the others run the
        plain UPDATE (and then read the row, see :meth:`run`).
        """
        if self.listen and statement.notifying is not None:
            if own_transaction and statement.notifying_no_wait is not None:
                return statement.notifying_no_wait
            return statement.notifying
        if own_transaction and self.postgresql and statement.no_wait is not None:
            return statement.no_wait
        if self.returning and statement.returning is not None:
            return statement.returning
        return statement.update

    def run(self, statement: Statement, params: dict[str, Any]) -> Any:
        """Run ``statement`` in a transaction of its own; the row it changed, if it changed one.

        The row holds the statement's ``returns`` first (an announcing form adds a column).
        """
        form = self._form(statement)
        if form is statement.update:
            return self.update_then_read(statement.update, statement.read, params)
        return self.first(form, params)

    def run_in(self, session: Session, statement: Statement, params: dict[str, Any]) -> Any:
        """Run ``statement`` in ``session``'s transaction; the row it changed, if it changed one.

        The caller then commits or rolls back.
        """
        form = self._form(statement, own_transaction=False)
        if form is not statement.update:
            return session.execute(form, params).first()
        if session.execute(form, params).rowcount != 1:  # type: ignore[attr-defined]
            return None
        return session.execute(statement.read, params).first()

    def count(self, statement: Statement, params: dict[str, Any]) -> int:
        """Run ``statement`` in a transaction of its own; the number of rows it changed."""
        return self.rowcount(self._form(statement), params)

    def update_then_read(
        self, update: sa.Update, read: sa.Select[Any], params: dict[str, Any]
    ) -> Any:
        """Where UPDATE cannot return rows: run ``update``, then ``read`` if it changed one row."""
        with self.engine.begin() as conn:
            if conn.execute(update, params).rowcount != 1:
                return None
            return conn.execute(read, params).first()

    def wait_until_finished(self, job_id: int, timeout: float) -> JobReply | None:
        """Wait up to ``timeout`` seconds for the job to end; its reply then (``None``: gone).

        The wait holds no database connection: see :mod:`.waiting`. It reads
        the job once before waiting and once when woken, that read shared with
        the other requests the same end woke (see :mod:`.shared_reads`).
        """
        return wait_for(  # type: ignore[no-any-return]
            self.waiters(),
            job_id,
            timeout,
            read=lambda: self.fetch_reply(job_id),
            reread=lambda: self.shared_reads.read(job_id),
            done=_ended_or_gone,
        )

    def waiters(self) -> Waiters:
        """This store's waiting requests (made on first use)."""
        with self._waiters_lock:
            if self._waiters is None:
                if self.listen:
                    # The streams a change wakes find the job read for them, in one
                    # query with the other jobs changed meanwhile.
                    self._waiters = Waiters(
                        listen=self._listening, refresh=self.fresh_reads.refresh
                    )
                else:
                    self._waiters = Waiters(check=self._ended_or_gone, changes=self._changed)
            return self._waiters

    @contextlib.contextmanager
    def _listening(self) -> Iterator[Callable[[float], Iterator[int]]]:
        """A connection of its own (taken out of the pool) that LISTENs on :data:`CHANNEL`."""
        connection = self.engine.raw_connection()
        pg: Any = connection.driver_connection
        connection.detach()
        try:
            pg.execute(f"LISTEN {CHANNEL}")

            def announced(timeout: float) -> Iterator[int]:
                for notification in pg.notifies(timeout=timeout):
                    payload = notification.payload
                    if payload.isdigit():
                        yield int(payload)
                    elif payload.startswith(CHANGED_PREFIX) and payload[1:].isdigit():
                        yield Changed(payload[1:])

            yield announced
        finally:
            connection.close()

    def _ended_or_gone(self, job_ids: list[int]) -> list[int]:
        """Of ``job_ids``, those whose jobs are no longer waiting or processing."""
        pending: set[int] = set()
        for start in range(0, len(job_ids), _CHECK_BATCH):
            batch = job_ids[start : start + _CHECK_BATCH]
            pending.update(row[0] for row in self.all(PENDING_OF, {"job_ids": batch}))
        return [job_id for job_id in job_ids if job_id not in pending]

    def _changed(self, job_ids: list[int]) -> list[int]:
        """Of ``job_ids``, those whose state changed since the last check (or never checked).

        A job's state is what an event stream shows of it: status, progress and
        message, attempts. One query per :data:`_CHECK_BATCH` ids for all the streams.
        """
        now: dict[int, tuple[Any, ...]] = {}
        for start in range(0, len(job_ids), _CHECK_BATCH):
            batch = job_ids[start : start + _CHECK_BATCH]
            for row in self.all(STATES_OF, {"job_ids": batch}):
                now[row[0]] = tuple(row[1:])
        changed = [job_id for job_id in job_ids if self._seen.get(job_id) != now.get(job_id, ())]
        # Only the jobs still watched are remembered.
        self._seen = {job_id: now.get(job_id, ()) for job_id in job_ids}
        return changed

    def dispose(self) -> None:
        """Close the store's own pooled connections (those threads keep at their next use)."""
        if self._kept is not None:
            self._kept.drop_all()
        self.engine.dispose()
