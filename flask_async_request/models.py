"""The :class:`Job` model and its :class:`JobStatus`."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, ClassVar, ParamSpec, Protocol, overload

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from .values import new_uid, utcnow

TABLE_NAME = "async_request_jobs"
#: The result store: replies too large for the jobs table, and binary ones, in chunks.
RESULTS_TABLE_NAME = "async_request_results"


class JobStatus(str, enum.Enum):
    """Where a job is in its life; stored as its lowercase value."""

    WAITING = "waiting"
    PROCESSING = "processing"
    PROCESSED = "processed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """Whether the job has a stored reply and will not run again."""
        return self in (JobStatus.PROCESSED, JobStatus.FAILED, JobStatus.CANCELLED)

    def __str__(self) -> str:
        return self.value


P = ParamSpec("P")


class WorkerLike(Protocol[P]):
    """A :class:`~flask_async_request.Worker` subclass as type checkers see it.

    The model imports nothing of the package, so it names a worker by its
    methods: ``execute``, whose parameters ``P`` are those that
    :meth:`Job.create_and_enqueue` checks a call's arguments against, and
    ``check_cancelled``, which only ``Worker`` has. At run time only ``Worker``
    subclasses are accepted, whatever their methods.
    """

    def execute(self, *args: P.args, **kwargs: P.kwargs) -> object:
        """Do the work; see :meth:`Worker.execute <flask_async_request.Worker.execute>`."""

    def check_cancelled(self) -> None:
        """Raise if the job was cancelled."""


class _Base(DeclarativeBase):
    """Private registry: ``init_app`` copies the table into the app's ``db.metadata``."""

    metadata = sa.MetaData()


class Job(_Base):
    """One asynchronous request: the worker to run, its arguments and, once done, its reply."""

    __tablename__ = TABLE_NAME
    # No index holds a column that a claim, a lease renewal or a progress report
    # changes (status, attempts, the times but created_at and finished_at), not
    # even in its WHERE: so on PostgreSQL those UPDATEs are HOT, written on the
    # row's own page with no new entry in any index (see FILLFACTOR). A job's
    # index entries change only as it is created, as it ends and if it is retried.
    __table_args__ = (
        # Ends with id, so a list of one worker's jobs newest first is one range scan
        # of the index, with no sort, on PostgreSQL too (whose indexes do not end
        # with the key by themselves).
        sa.Index(f"ix_{TABLE_NAME}_worker_id", "worker", "id"),
        # The waiting and processing jobs, by id: the sweeper's reads, the metrics'
        # count, a list of pending jobs. A job leaves it once, as it ends. MariaDB
        # has no partial index and reads them from the finished_at index instead
        # (NULL first, then by id, as InnoDB ends each entry with the key), so
        # there this one is the primary key's twin, never read.
        sa.Index(
            f"ix_{TABLE_NAME}_unfinished_id",
            "id",
            postgresql_where=sa.text("finished_at IS NULL"),
            sqlite_where=sa.text("finished_at IS NULL"),
        ),
        # An owner's jobs by creation time: the admission rate's count of those
        # created within its window. Neither column ever changes.
        sa.Index(f"ix_{TABLE_NAME}_owner_created_at", "owner", "created_at"),
        # An owner's waiting and processing jobs, by id: the in-flight cap's count,
        # the running cap's (which reads their status from the rows: no index holds
        # it) and its oldest parked job. A job leaves it once, as it ends; on MariaDB,
        # which has no partial index, they are the range of NULL finished_at.
        sa.Index(
            f"ix_{TABLE_NAME}_owner_unfinished",
            "owner",
            "finished_at",
            "id",
            postgresql_where=sa.text("finished_at IS NULL"),
            sqlite_where=sa.text("finished_at IS NULL"),
        ),
        # The finished jobs by the time they ended: the purge's ranges. A job
        # enters it once, as it ends.
        sa.Index(
            f"ix_{TABLE_NAME}_finished_at",
            "finished_at",
            postgresql_where=sa.text("finished_at IS NOT NULL"),
            sqlite_where=sa.text("finished_at IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True
    )
    uid: Mapped[str] = mapped_column(sa.String(32), unique=True, nullable=False, default=new_uid)
    worker: Mapped[str] = mapped_column(sa.String(255), nullable=False)
    params: Mapped[dict[str, Any]] = mapped_column(sa.JSON(), nullable=False)
    status: Mapped[JobStatus] = mapped_column(
        sa.Enum(
            JobStatus,
            name="async_request_job_status",
            native_enum=False,
            length=16,
            values_callable=lambda statuses: [s.value for s in statuses],
            validate_strings=True,
        ),
        nullable=False,
        default=JobStatus.WAITING,
    )
    status_code: Mapped[int | None] = mapped_column(sa.Integer())
    #: How far the worker got, from 0 to 1, as it last reported.
    progress: Mapped[float | None] = mapped_column(sa.Float())
    #: What the worker said it was doing, as it last reported.
    progress_message: Mapped[str | None] = mapped_column(sa.String(255))
    response: Mapped[str | None] = mapped_column(sa.Text())
    #: The reply's media type, when the worker (or an asynchronous view) gave one.
    content_type: Mapped[str | None] = mapped_column(sa.String(255))
    #: The reply's headers kept from the worker or the view, as JSON text
    #: (``[[name, value], ...]``); text, so every driver hands it back alike.
    headers: Mapped[str | None] = mapped_column(sa.Text())
    #: The size in bytes of a reply held in the result store (``None``: the reply is
    #: ``response``). Set with the job's end, once every chunk is written: a result
    #: is visible only when complete.
    result_size: Mapped[int | None] = mapped_column(sa.BigInteger())
    #: The SHA-256 of a reply held in the result store, in hex.
    result_sha256: Mapped[str | None] = mapped_column(sa.String(64))
    #: Where a reply held in a result store is: the url of a file or an object
    #: (``file:///...``, ``s3://bucket/key``); ``None``: the database's result
    #: table, as every stored reply was before there were other stores. Recorded
    #: with the result, so a later change of ``ASYNC_REQUEST_RESULT_STORE``
    #: still finds it.
    result_location: Mapped[str | None] = mapped_column(sa.String(1024))
    #: The Celery queue the job's messages go to (``None``: the app's default).
    queue: Mapped[str | None] = mapped_column(sa.String(255))
    #: Seconds the job may run before it fails with a time-limit error (``None``: no limit).
    time_limit: Mapped[float | None] = mapped_column(sa.Float())
    #: Bumped by every claim; it fences off a worker whose lease was taken over.
    attempts: Mapped[int] = mapped_column(sa.Integer(), nullable=False, default=0)
    #: The identity that created the job (see ``AsyncRequest.identity_loader``).
    owner: Mapped[str | None] = mapped_column(sa.String(255))
    #: Hash of the owner and the Idempotency-Key the job was created with.
    idempotency_scope: Mapped[str | None] = mapped_column(sa.String(64), unique=True)
    #: Where a signed POST announces the job's end.
    callback_url: Mapped[str | None] = mapped_column(sa.String(2048))
    #: How the last delivery of the callback went, for operators ("delivered: 204",
    #: "refused: ...", "failed: ...").
    callback_status: Mapped[str | None] = mapped_column(sa.String(255))
    #: The traceback of the exception a failed job's worker raised, its end kept
    #: (see ``outcomes.MAX_TRACEBACK``): for operators (the dashboard, ``show``),
    #: never in an answer to a client.
    traceback: Mapped[str | None] = mapped_column(sa.Text())
    #: The newest deliveries of the callback, as JSON text (see ``deliveries.py``).
    callback_deliveries: Mapped[str | None] = mapped_column(sa.Text())
    #: The trace context of the request that created the job, as the JSON text of an
    #: OpenTelemetry propagator's carrier (``None``: no trace, or no OpenTelemetry).
    trace_context: Mapped[str | None] = mapped_column(sa.Text())
    #: When the job should run: its creation, or the end of a retry's backoff.
    due_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, default=utcnow
    )
    #: A processing job whose lease runs out has lost its worker.
    lease_expires_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    #: Indexed to turn an age into a range of ids (the jobs dashboard's age filters).
    created_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, default=utcnow, index=True
    )
    updated_at: Mapped[datetime] = mapped_column(
        sa.DateTime(timezone=True), nullable=False, default=utcnow, onupdate=utcnow
    )
    started_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))
    #: Set as the job ends, and only then: ``NULL`` is waiting or processing.
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True))

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.worker} {self.status}>"

    @property
    def args(self) -> list[Any]:
        """The positional arguments ``execute`` is called with."""
        return list(self.params.get("args", []))

    @property
    def kwargs(self) -> dict[str, Any]:
        """The keyword arguments ``execute`` is called with."""
        return dict(self.params.get("kwargs", {}))

    #: What the extension gives the model: set by ``AsyncRequest.init_app``, as
    #: Flask-SQLAlchemy sets ``__fsa__`` on its models.
    __async_request__: ClassVar[JobGateway | None] = None

    @classmethod
    def _gateway(cls) -> JobGateway:
        gateway = cls.__async_request__
        if gateway is None:
            raise RuntimeError(
                "flask-async-request is not initialised; call async_request.init_app(app)"
                " in the app factory before creating or signing jobs."
            )
        return gateway

    @property
    def token(self) -> str:
        """A signed token that lets a client read this job from the status endpoint.

        A job from :meth:`create_and_enqueue` holds the token signed as it was
        created; a job read from the database is signed on first use. Either way
        it is kept on the instance, so reading it again costs no query even after
        a commit has expired the row.
        """
        token: str | None = self.__dict__.get(_TOKEN_KEY)
        if token is None:
            token = self.__dict__[_TOKEN_KEY] = self._gateway().sign_token(self)
        return token

    def keep_token(self, token: str) -> None:
        """Keep ``token``, signed for this job, as its :attr:`token`."""
        self.__dict__[_TOKEN_KEY] = token

    # A keyword-only parameter cannot stand between ``*args: P.args`` and
    # ``**kwargs: P.kwargs`` (PEP 612), so the arguments of ``execute`` are
    # checked by the first overload, which has none of the library's keywords;
    # each other overload requires one of them and checks the worker class alone.
    @overload
    @classmethod
    def create_and_enqueue(
        cls, worker_class: type[WorkerLike[P]], *args: P.args, **kwargs: P.kwargs
    ) -> Job: ...

    @overload
    @classmethod
    def create_and_enqueue(
        cls,
        worker_class: type[WorkerLike[...]],
        *args: Any,
        commit: bool,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
        **kwargs: Any,
    ) -> Job: ...

    @overload
    @classmethod
    def create_and_enqueue(
        cls,
        worker_class: type[WorkerLike[...]],
        *args: Any,
        commit: bool = True,
        idempotency_key: str | None,
        callback_url: str | None = None,
        **kwargs: Any,
    ) -> Job: ...

    @overload
    @classmethod
    def create_and_enqueue(
        cls,
        worker_class: type[WorkerLike[...]],
        *args: Any,
        commit: bool = True,
        idempotency_key: str | None = None,
        callback_url: str | None,
        **kwargs: Any,
    ) -> Job: ...

    @classmethod
    def create_and_enqueue(
        cls,
        worker_class: type,
        *args: Any,
        # Any: the first overload's P.kwargs may hold these names with other types.
        commit: Any = True,
        idempotency_key: Any = None,
        callback_url: Any = None,
        **kwargs: Any,
    ) -> Job:
        """Store a ``waiting`` job for ``worker_class`` and publish it to the workers.

        The row is committed before the message is published, so a worker never
        sees a message for a job it cannot read. ``commit``, ``idempotency_key``
        and ``callback_url`` are taken for the library; all other keywords go to
        ``execute`` (use :meth:`enqueue_call` for an ``execute`` that takes one
        of those names itself). Type checkers check the arguments against the
        parameters of ``worker_class.execute``, and that ``worker_class`` is a
        worker.

        :param worker_class: a :class:`~flask_async_request.Worker` subclass that a
            worker process can import by its dotted path.
        :param args: positional arguments for ``execute``; JSON-serialisable.
        :param commit: ``True`` commits the session (and whatever the caller did
            in it), then publishes. ``False`` only flushes the row: the message is
            published when the caller commits, and never if the transaction rolls
            back. Inside a ``db.session.begin()`` block the job always waits for
            that commit.
        :param idempotency_key: a client's ``Idempotency-Key``: the same key
            (for the same identity) returns the job it first created, as long as
            that job is kept; with other arguments it raises
            :class:`~flask_async_request.IdempotencyConflict` (the status
            endpoint's app answers 422 for it).
        :param callback_url: an http(s) url that receives a signed POST when the
            job ends (see :mod:`flask_async_request.webhooks`).
        :param kwargs: keyword arguments for ``execute``; JSON-serialisable.
        :raises TypeError: ``worker_class`` is not a ``Worker`` subclass, or an
            argument cannot be stored as JSON.
        :raises ValueError: ``worker_class`` cannot be imported by its path.
        :raises EnqueueError: the row is stored but the broker refused the message;
            the sweeper publishes it once the broker is back.
        """
        return cls._gateway().create_job(
            worker_class,
            args,
            kwargs,
            commit=commit,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
        )

    @classmethod
    def enqueue_call(
        cls,
        worker_class: type[WorkerLike[...]],
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        commit: bool = True,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Like :meth:`create_and_enqueue`, with the arguments of ``execute`` given whole."""
        return cls._gateway().create_job(
            worker_class,
            args,
            kwargs or {},
            commit=commit,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
        )


#: How full PostgreSQL packs a page of the jobs table with new rows, in percent.
#: The rest is room for the new versions of those rows: an UPDATE is HOT only if
#: its new version fits on the row's own page. At the default of 100, the pages of
#: a backlog are full when its jobs are claimed: of 5,000 waiting jobs claimed in
#: a row, 83% of the claims were HOT at 100, 97% at 70.
FILLFACTOR = 70


# Kept by the copy that init_app makes in the app's metadata (propagate).
@sa.event.listens_for(Job.__table__, "after_create", propagate=True)
def _set_fillfactor(table: sa.Table, connection: sa.Connection, **kwargs: Any) -> None:
    """Give the new jobs table its :data:`FILLFACTOR`, on PostgreSQL."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"ALTER TABLE {table.name} SET (fillfactor = {FILLFACTOR})")


class ResultChunk(_Base):
    """One chunk of a reply held in the result store.

    The chunks of a job's result are those of the attempt that finished it
    (``attempt`` is the job's ``attempts``), in the order of ``seq``. Chunks of
    another attempt, or of a job that has no ``result_size``, are leftovers of
    a run that did not finish: the purge deletes them.
    """

    __tablename__ = RESULTS_TABLE_NAME

    job_id: Mapped[int] = mapped_column(
        sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True
    )
    attempt: Mapped[int] = mapped_column(sa.Integer(), primary_key=True)
    seq: Mapped[int] = mapped_column(sa.Integer(), primary_key=True)
    #: Where the chunk starts in the result, in bytes: a range read finds its first chunk.
    start: Mapped[int] = mapped_column(sa.BigInteger(), nullable=False)
    # LONGBLOB on MariaDB and MySQL, whose BLOB holds 64 KiB; bytea on PostgreSQL.
    data: Mapped[bytes] = mapped_column(
        sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
        nullable=False,
    )

    def __repr__(self) -> str:
        return f"<ResultChunk {self.job_id}/{self.attempt}/{self.seq}>"


#: How PostgreSQL compresses the chunks of a stored result, where it can (14 and
#: later, built with lz4), in place of its default pglz: results are often
#: exports (CSV, JSON) that compress well, and pglz is slow at them both ways
#: (``bench/results.py --data csv --compression pglz``, then ``lz4``).
RESULTS_COMPRESSION = "lz4"


def results_compression(method: str, table: str = RESULTS_TABLE_NAME) -> str:
    """The statement that sets ``method`` as the compression of ``table``'s ``data``.

    PostgreSQL only; it does nothing on a server without lz4 (before 14, or
    built without it), and ``ALTER`` is run by ``EXECUTE`` so that a server that
    does not know ``SET COMPRESSION`` never parses it. Values already written
    keep the compression they were written with.
    """
    return (
        "DO $$ BEGIN IF EXISTS (SELECT FROM pg_settings WHERE name = 'default_toast_compression'"
        " AND 'lz4' = ANY(enumvals)) THEN EXECUTE 'ALTER TABLE"
        f" {table} ALTER COLUMN data SET COMPRESSION {method}'; END IF; END $$"
    )


# Kept by the copy that init_app makes in the app's metadata (propagate).
@sa.event.listens_for(ResultChunk.__table__, "after_create", propagate=True)
def _compress_results(table: sa.Table, connection: sa.Connection, **kwargs: Any) -> None:
    """Give the new results table's chunks :data:`RESULTS_COMPRESSION`, on PostgreSQL."""
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(results_compression(RESULTS_COMPRESSION, table.name))


def column_length(name: str) -> int | None:
    """The most characters column ``name`` of the jobs table holds (``None``: no set size)."""
    length: int | None = getattr(Job.__table__.c[name].type, "length", None)
    return length


#: Where a job keeps its signed token: in the instance's own dict, not a column.
_TOKEN_KEY = "_signed_token"


class JobGateway(Protocol):
    """What the model needs from the extension to create jobs and sign their tokens."""

    def create_job(
        self,
        worker_class: type,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        commit: bool,
        idempotency_key: str | None,
        callback_url: str | None,
    ) -> Job:
        """Validate, store and publish a job (see :meth:`Job.create_and_enqueue`)."""

    def sign_token(self, job: Job) -> str:
        """A token for ``job``, signed with the current app's settings."""
