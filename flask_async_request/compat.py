"""Other libraries' internals, each behind one function with a fallback that keeps working.

The library reaches into SQLAlchemy, Celery and kombu where their public API
costs too much on a hot path or has no word for what is needed. Every such
use is here, and nowhere else (an import-linter contract holds the other
modules to it). Each entry names the internal it uses, the public API it
stands in for, if any, and what is done when a release renames or changes
it: the fallback, which keeps the feature working, perhaps slower, with one
warning in the ``flask_async_request`` log per process and internal. The
unit tests run against the newest releases in CI, and each fallback has a
test of its own that takes its internal away.

This module imports nothing of the package.
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import queue
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import exc as sa_exc

if TYPE_CHECKING:
    from celery import Celery
    from sqlalchemy.engine import Dialect

logger = logging.getLogger("flask_async_request")

#: What a renamed, removed or reshaped attribute or function raises.
_CHANGED = (AttributeError, TypeError, KeyError, ImportError)

#: The internals found gone or changed in this process, each warned about once.
_warned: set[str] = set()
_warned_lock = threading.Lock()


def _changed(internal: str, fallback: str, error: BaseException) -> None:
    """Log, once per process, that ``internal`` is gone or changed, and what is done instead."""
    with _warned_lock:
        if internal in _warned:
            return
        _warned.add(internal)
    logger.warning(
        "flask-async-request: %s is gone or changed in the installed release (%s: %s); %s."
        " Please report it, with the versions installed.",
        internal,
        type(error).__name__,
        error,
        fallback,
    )


# -- SQLAlchemy: a statement compiled once, run on a raw cursor ------------------------------

#: What the store does when a hot statement cannot be precompiled.
_ORDINARY_PATH = "hot statements run through SQLAlchemy's ordinary execution, a little slower"


class Precompiled:
    """A statement compiled once for one dialect, with its types' bind and result processing.

    Internal: the attributes of SQLAlchemy's ``SQLCompiler`` (``bind_names``,
    ``escaped_bind_names``, ``positiontup``, ``post_compile_params``,
    ``literal_execute_params``, ``insert_prefetch``, ``update_prefetch``), the
    ``required``, ``callable`` and ``value`` of its ``BindParameter`` objects,
    and the ``__wrapped__`` of the function SQLAlchemy wraps a column's Python
    default of no arguments in. Public API it stands in for:
    ``Connection.execute(statement, params)``, whose execution layer costs more
    than a claim or a finish itself. Use :func:`precompile`, which falls back to
    that when they are gone.

    The driver's parameters are bound from a plan made here, once: which of the
    caller's keys fills each of the SQL's parameters, and each constant of the
    statement already processed by its type. The plan is checked against the
    compiler's own ``construct_params`` when made; where they differ (a release
    that binds otherwise), ``construct_params`` binds them at each execution,
    as before, a little slower, with one warning.

    :raises ValueError: the statement cannot be run precompiled by design (a
        list parameter, which compiles afresh for each length).
    """

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled: Any = statement.compile(dialect=dialect)
        if compiled.post_compile_params or compiled.literal_execute_params:
            raise ValueError("A hot statement cannot hold expanding parameters.")
        self.sql: str = compiled.string
        self._compiled = compiled
        # Columns SQLAlchemy fills in from Python at each execution (``onupdate``,
        # ``default``) when the statement does not set them itself.
        self._defaults: dict[str, Any] = {}
        for column in compiled.update_prefetch:
            self._defaults[column.key] = _python_default(column.onupdate)
        for column in compiled.insert_prefetch:
            self._defaults[column.key] = _python_default(column.default)
        # Keyed as the driver's parameters are: by the names in the SQL, escaped.
        escaped = compiled.escaped_bind_names
        self._binds = {
            escaped.get(name, name): process
            for bind, name in compiled.bind_names.items()
            if (process := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        }
        # The types' own processors, not the driver's variants, which want the
        # column's type code from a cursor: psycopg hands back the jobs table's
        # values as Python wants them, all but the Enum's.
        columns = getattr(statement, "exported_columns", ())
        self._results = [
            (index, process)
            for index, column in enumerate(columns)
            if (process := column.type.result_processor(dialect, None)) is not None
        ]
        #: The SQL's parameters each key of the caller's fills, with the type's
        #: processor: SQLAlchemy looks a parameter up by its key, then by its name
        #: in the SQL, so one found by its name is skipped when its key is given too.
        self._targets: dict[str, list[tuple[str, Any, str | None]]] = {}
        raw_targets: dict[str, list[tuple[str, Any, str | None]]] = {}
        #: The keys the caller must give.
        self._required: frozenset[str] = frozenset(
            bind.key for bind in compiled.bind_names if bind.required
        )
        #: The parameters made by a function when not given: their keys, SQL name, function.
        self._made: list[tuple[tuple[str, ...], str, Any]] = []
        #: The statement's constants, as the driver is sent them and as they are.
        self._constants: dict[str, Any] = {}
        raw_constants: dict[str, Any] = {}
        for bind, name in compiled.bind_names.items():
            sql_name = escaped.get(name, name)
            process = self._binds.get(sql_name)
            lookups: list[tuple[str, str | None]] = [(bind.key, None)]
            if name != bind.key:
                lookups.append((name, bind.key))
            for key, unless in lookups:
                self._targets.setdefault(key, []).append((sql_name, process, unless))
                raw_targets.setdefault(key, []).append((sql_name, None, unless))
            if bind.callable is not None and not bind.required:
                keys = (bind.key,) if name == bind.key else (bind.key, name)
                self._made.append((keys, sql_name, bind.callable))
            elif not bind.required:
                raw_constants[sql_name] = bind.value
                value = bind.value
                self._constants[sql_name] = value if process is None else process(value)
        #: The Python defaults of the columns SQLAlchemy fills in, with their processors.
        self._made_defaults = [
            (name, default, self._binds.get(name)) for name, default in self._defaults.items()
        ]
        #: The names of the SQL's parameters in their order, for a positional driver.
        self._order: tuple[str, ...] | None = None
        if compiled.positional:
            self._order = tuple(escaped.get(name, name) for name in compiled.positiontup)
        # Called once here, so that a changed signature is found now, not at
        # each execution; and the plan checked against it.
        self._planned = True
        given_all = {key: object() for key in self._targets}
        given_required = {key: object() for key in self._required}
        for given in (given_all, given_required):
            expected = self._compiled.construct_params(given)
            if self._bind(given, raw_constants, raw_targets) != expected:
                _changed(
                    "SQLAlchemy's SQLCompiler.construct_params (a plan of the parameters"
                    " differs from its own)",
                    "hot statements' parameters are bound by it at each execution, a little slower",
                    ValueError(f"{sorted(expected)} for {self.sql[:60]!r}"),
                )
                self._planned = False
                break

    def _bind(
        self,
        values: dict[str, Any],
        constants: dict[str, Any],
        targets: dict[str, list[tuple[str, Any, str | None]]],
    ) -> dict[str, Any]:
        """The parameters of ``values``: ``constants``, and each value where the plan puts it."""
        if not values.keys() >= self._required:
            missing = min(self._required.difference(values))
            # As SQLAlchemy says it, with its code.
            raise sa_exc.InvalidRequestError(
                f"A value is required for bind parameter {missing!r}", code="cd3x"
            )
        params = constants.copy()
        for keys, sql_name, make in self._made:
            if not any(key in values for key in keys):
                value = make()
                process = targets[keys[0]][0][1]
                params[sql_name] = value if process is None else process(value)
        for key, value in values.items():
            found = targets.get(key)
            if found is not None:
                for sql_name, process, unless in found:
                    if unless is None or unless not in values:
                        params[sql_name] = value if process is None else process(value)
        return params

    def params(self, values: dict[str, Any]) -> Any:
        """The driver's parameters for ``values``, as SQLAlchemy would send them.

        A dict by the SQL's names, or, for a positional driver, a tuple in their order.
        """
        if self._planned:
            params = self._bind(values, self._constants, self._targets)
            for name, default, process in self._made_defaults:
                value = default()
                params[name] = value if process is None else process(value)
        else:
            params = self._compiled.construct_params(values)
            for name, default in self._defaults.items():
                params[name] = default()
            for name, process in self._binds.items():
                if name in params:
                    params[name] = process(params[name])
        if self._order is not None:
            return tuple(params[name] for name in self._order)
        return params

    def row(self, row: Any) -> Any:
        """The driver's ``row`` with each column's type applied, as SQLAlchemy would give it."""
        if row is None or not self._results:
            return row
        values = list(row)
        for index, process in self._results:
            values[index] = process(values[index])
        return tuple(values)


def _python_default(default: Any) -> Callable[[], Any]:
    """A column's Python-side default or ``onupdate`` as a function of nothing.

    :raises ValueError: for a SQL expression, which only SQLAlchemy renders.
    :raises AttributeError: a function SQLAlchemy no longer wraps as it did.
    """
    if default is not None and default.is_scalar:
        return lambda: default.arg
    if default is not None and default.is_callable:
        # SQLAlchemy wraps a function of no arguments into one taking its
        # context; the jobs table has no default that takes the context.
        function: Callable[[], Any] = default.arg.__wrapped__
        return function
    raise ValueError(f"A hot statement's column default {default!r} needs SQLAlchemy.")


def precompile(statement: Any, dialect: Dialect) -> Precompiled | None:
    """``statement`` as a :class:`Precompiled`, or ``None``: run it through SQLAlchemy.

    ``None`` for a statement that cannot be precompiled by design, and, with one
    warning, for any when SQLAlchemy's compiler no longer has what it needs.
    """
    try:
        return Precompiled(statement, dialect)
    except ValueError:
        return None
    except _CHANGED as e:
        _changed(
            "SQLAlchemy's compiled statement (SQLCompiler attributes, a default's __wrapped__)",
            _ORDINARY_PATH,
            e,
        )
        return None


# -- SQLAlchemy: whether a session's transaction has used a connection -----------------------


def transaction_used_connection(transaction: Any) -> bool:
    """Whether the session transaction ``transaction`` has begun on a connection yet.

    Internal: ``SessionTransaction._connections``. No public API says it (the
    ``after_begin`` session event could record it). Fallback: ``True``, as if
    it had: a new job is then stored through the session (BEGIN, INSERT,
    COMMIT) instead of in one autocommitted INSERT, which is always right.
    """
    try:
        return bool(transaction._connections)
    except _CHANGED as e:
        _changed(
            "sqlalchemy.orm.SessionTransaction._connections",
            "a job created in a session's transaction is stored through the session",
            e,
        )
        return True


# -- Celery: a callback for every Celery app finalized ---------------------------------------


def on_every_app_finalized(callback: Callable[[Celery], object]) -> None:
    """Call ``callback(celery_app)`` for every Celery app of the process when it is finalized.

    Internal: ``celery._state.connect_on_app_finalize``, what Celery's own
    ``shared_task`` uses. No public API is called for every app, made after
    the call too. Fallback: Celery's ``import_modules`` signal, sent with the
    app when ``celery worker``, ``beat`` or any ``celery`` command starts on
    it: a worker's app is still served, but a web process keeps publishing
    through the Celery app it was first given.
    """
    try:
        from celery._state import connect_on_app_finalize
    except _CHANGED as e:
        from celery.signals import import_modules

        _changed(
            "celery._state.connect_on_app_finalize",
            "a Celery app made after init_app is served once a celery command starts on it",
            e,
        )

        def imported(sender: Celery, **kwargs: object) -> None:
            callback(sender)

        import_modules.connect(imported, weak=False)
        return
    connect_on_app_finalize(callback)


# -- Celery: the embedded worker's pool ------------------------------------------------------


class _Applied:
    """What the pool gives Celery for a job handed to it (Celery keeps a weak reference)."""

    __slots__ = ("__weakref__",)


@functools.cache
def daemon_thread_pool() -> type:
    """A Celery pool of daemon threads, so an exiting process does not wait for its jobs.

    Internal: ``celery.concurrency.base.BasePool`` (its ``on_start``,
    ``on_apply``, ``on_stop`` and ``_get_info`` hooks, its ``limit``) and
    ``apply_target``, which Celery's own pools build on. Public API it stands
    in for: ``pool="threads"``, a ``ThreadPoolExecutor``, whose threads the
    interpreter joins at exit: a reload or Ctrl+C would wait for every running
    job to end. Fallback: that pool, made not to mark the process as a worker
    either. The pool's ``wait_idle(timeout)`` tells whether no job still runs;
    Celery's has none, and its stop waits for its jobs.

    Made on first use, for the cost of importing Celery's pools.
    """
    try:
        from celery.concurrency.base import BasePool, apply_target

        for hook in ("on_start", "on_apply", "on_stop", "_get_info"):
            if not callable(getattr(BasePool, hook)):
                raise TypeError(f"BasePool.{hook} is not a method")
    except _CHANGED as e:
        from celery.concurrency import get_implementation

        _changed(
            "celery.concurrency.base.BasePool",
            "the embedded worker runs jobs on Celery's thread pool, and an exiting process"
            " waits for the jobs it runs",
            e,
        )
        threads: type = get_implementation("threads")
        return type("ThreadPool", (threads,), {"task_join_will_block": False})

    class DaemonThreadPool(BasePool):  # type: ignore[misc]
        body_can_be_buffer = True
        signal_safe = False
        # Celery marks the process a worker, where AsyncResult.get() is refused,
        # unless its pool says otherwise (as its gevent pool does); the web
        # process is not one.
        task_join_will_block = False

        def on_start(self) -> None:
            self._tasks: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
            self._changed = threading.Condition()
            self._busy = 0
            self._closed = False
            self._threads = [
                threading.Thread(target=self._serve, name="flask-async-request-job", daemon=True)
                for _ in range(self.limit)
            ]
            for thread in self._threads:
                thread.start()

        def _serve(self) -> None:
            while (task := self._tasks.get()) is not None:
                with self._changed:
                    if self._closed:
                        return
                    self._busy += 1
                try:
                    apply_target(*task)
                except Exception:
                    logger.exception("The embedded worker's pool could not run a task.")
                finally:
                    with self._changed:
                        self._busy -= 1
                        self._changed.notify_all()

        def on_apply(
            self,
            target: Callable[..., Any],
            args: tuple[Any, ...] | None = None,
            kwargs: dict[str, Any] | None = None,
            callback: Callable[..., Any] | None = None,
            accept_callback: Callable[..., Any] | None = None,
            **_: Any,
        ) -> _Applied:
            self._tasks.put((target, args, kwargs, callback, accept_callback))
            return _Applied()

        def on_stop(self) -> None:
            # Jobs handed over but not started stay waiting in the table, where
            # the next start's recovery finds them.
            with self._changed:
                self._closed = True
            for _ in self._threads:
                self._tasks.put(None)

        def wait_idle(self, timeout: float) -> bool:
            """Wait up to ``timeout`` seconds for the running jobs; whether none runs."""
            with self._changed:
                return self._changed.wait_for(lambda: self._busy == 0, timeout)

        def _get_info(self) -> dict[str, Any]:
            info: dict[str, Any] = super()._get_info()
            info.update({"max-concurrency": self.limit, "threads": len(self._threads)})
            return info

    return DaemonThreadPool


# -- Celery: the origin a message names ------------------------------------------------------


def anon_nodename() -> str:
    """The node name Celery writes as a message's ``origin`` from a process that is no worker.

    Internal: ``celery.utils.nodenames.anon_nodename``. Fallback: the same
    name made here, ``gen<pid>@<host name>``.
    """
    try:
        from celery.utils.nodenames import anon_nodename as celery_anon_nodename

        return str(celery_anon_nodename())
    except _CHANGED as e:
        _changed(
            "celery.utils.nodenames.anon_nodename",
            "messages name their origin as Celery 5.3 to 5.7 did",
            e,
        )
        return f"gen{os.getpid()}@{socket.gethostname()}"


# -- kombu: the Redis transport's client and lists -------------------------------------------


def redis_channel_fits(channel_class: type) -> bool:
    """Whether kombu's Redis ``channel_class`` has what :func:`redis_client` and
    :func:`redis_list` use, as they use it.

    Internal: ``Channel._create_client()`` and ``Channel._q_for_pri(queue,
    priority)`` of ``kombu.transport.redis``. Public API they stand in for:
    Celery's ``apply_async``, which makes a new client for every message.
    Fallback (when this answers ``False``): that ``apply_async``.
    """
    try:
        inspect.signature(channel_class._create_client).bind(None)  # type: ignore[attr-defined]
        inspect.signature(channel_class._q_for_pri).bind(None, "celery", 0)  # type: ignore[attr-defined]
    except (*_CHANGED, ValueError) as e:
        _changed(
            "kombu.transport.redis.Channel._create_client or _q_for_pri",
            "jobs' messages are sent with Celery's apply_async",
            e,
        )
        return False
    return True


def redis_client(channel: Any) -> Any:
    """A client of kombu Redis ``channel``'s own class and pool; see :func:`redis_channel_fits`."""
    return channel._create_client()


def redis_list(channel: Any) -> Callable[[str, int], str]:
    """What names the Redis list a queue's messages of a priority go to; see
    :func:`redis_channel_fits`."""
    key: Callable[[str, int], str] = channel._q_for_pri
    return key
