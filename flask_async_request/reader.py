"""The status endpoint's read path: one indexed lookup on a pooled autocommit connection."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, NamedTuple

import sqlalchemy as sa

from .models import Job, JobStatus

if TYPE_CHECKING:
    from flask import Flask
    from sqlalchemy.engine import Engine

_STATEMENT = sa.select(Job.uid, Job.owner, Job.status, Job.status_code, Job.response).where(
    Job.id == sa.bindparam("job_id")
)


class JobReply(NamedTuple):
    """The columns the status endpoint reads."""

    uid: str
    owner: str | None
    status: JobStatus
    status_code: int | None
    response: str | None


class ReplyReader:
    """Reads one job's reply with a single round trip and little Python in between.

    Polls are the hot path: every client polls many times per job. The ORM
    session would open a transaction and roll it back (two more round trips)
    and SQLAlchemy's execution layer costs several times the query itself, so
    the reader runs its precompiled statement on a raw pooled DBAPI connection.
    On a network database the connections are in autocommit mode, from a small
    pool of their own, so no BEGIN or ROLLBACK is ever sent.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        compiled = _STATEMENT.compile(dialect=engine.dialect)
        self.sql = compiled.string
        self.positional = bool(engine.dialect.positional)
        self.dbapi_error: type[Exception] = engine.dialect.loaded_dbapi.Error
        self.pid = os.getpid()

    @classmethod
    def for_app(cls, app: Flask, engine: Engine) -> ReplyReader:
        """A reader for ``app``'s jobs table on ``engine`` (the app's default engine)."""
        if engine.dialect.name == "sqlite":
            # No network round trips to save, and a second engine would not see an
            # in-memory database.
            return cls(engine)
        options: dict[str, Any] = dict(app.config.get("SQLALCHEMY_ENGINE_OPTIONS") or {})
        options.pop("isolation_level", None)
        options.setdefault("pool_size", 5)
        reader_engine = sa.create_engine(
            engine.url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None, **options
        )
        return cls(reader_engine)

    def fetch(self, job_id: int) -> JobReply | None:
        """The reply columns of job ``job_id``, or ``None`` when there is no such row.

        :raises sqlalchemy.exc.DBAPIError: the database could not be reached or queried.
        """
        params: Any = (job_id,) if self.positional else {"job_id": job_id}
        try:
            connection = self.engine.raw_connection()
        except self.dbapi_error as e:
            # The pool hands out unwrapped driver errors.
            raise sa.exc.DBAPIError.instance(None, None, e, self.dbapi_error) from e
        try:
            cursor = connection.cursor()
            try:
                cursor.execute(self.sql, params)
                row = cursor.fetchone()
            finally:
                cursor.close()
        except self.dbapi_error as e:
            connection.invalidate(e)
            raise sa.exc.DBAPIError.instance(
                self.sql, params, e, self.dbapi_error, connection_invalidated=True
            ) from e
        finally:
            connection.close()
        if row is None:
            return None
        uid, owner, status, status_code, response = row
        return JobReply(uid, owner, JobStatus(status), status_code, response)

    def dispose(self) -> None:
        """Close the reader's own pooled connections (not the app's engine)."""
        self.engine.dispose()
