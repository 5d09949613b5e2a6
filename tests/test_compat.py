"""Each of other libraries' internals taken away: its fallback keeps the feature working, and
says so once in the log."""

from __future__ import annotations

import datetime
import logging
import os
import time
from collections.abc import Iterator
from typing import Any

import celery._state
import celery.concurrency.base
import celery.concurrency.thread
import celery.signals
import celery.utils.nodenames
import celery.worker.request
import kombu.transport.redis
import pytest
import sqlalchemy as sa
from celery import Celery
from celery.utils.dispatch import Signal
from flask import Flask
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.orm import Session, scoped_session

from flask_async_request import Job, JobStatus, compat, statements
from flask_async_request.broker import PROCESS_TASK
from flask_async_request.publisher import sender_for
from flask_async_request.statements import NewRow
from flask_async_request.store import JobStore
from flask_async_request.tasks import _adopt
from tests import workers
from tests.conftest import PG_DATABASE_URL, AppFactory, Internals, add_job, reload_job

PG_URL = PG_DATABASE_URL
REDIS_URL = os.environ.get("FAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

_PG = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Each test starts with no internal warned about, and captures the warnings."""
    monkeypatch.setattr(compat, "_warned", set())
    caplog.set_level(logging.WARNING, logger="flask_async_request")


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "flask_async_request" and "is gone or changed" in r.getMessage()
    ]


class _Without:
    """A compiled statement of a release that renamed one of its attributes."""

    def __init__(self, compiled: Any, name: str) -> None:
        self._compiled, self._name = compiled, name

    def __getattr__(self, name: str) -> Any:
        if name == self._name:
            raise AttributeError(name)
        return getattr(self._compiled, name)


def _compiled_without(
    monkeypatch: pytest.MonkeyPatch, statement: Any, name: str = "update_prefetch"
) -> None:
    """Make ``statement.compile()`` give a compiled object lacking ``name``; SQLAlchemy's own
    execution does not call it."""
    compile_ = statement.compile
    # In the instance's own dict, and out of it again after the test: a statement
    # copies its dict into the statements made from it.
    monkeypatch.setitem(statement.__dict__, "compile", lambda **kw: _Without(compile_(**kw), name))


def test_hot_statements_precompile(caplog: pytest.LogCaptureFixture) -> None:
    """With the installed SQLAlchemy, a job's hot statements precompile for psycopg."""
    for statement in statements._HOT.values():
        compat.precompile(statement, _PG)
    assert _warnings(caplog) == []
    job_path = [
        statements.INSERT,
        statements.CLAIM.no_wait,
        statements.RENEW.no_wait,
        statements.PROGRESS.no_wait,
        statements.STATUS,
    ]
    assert None not in [compat.precompile(statement, _PG) for statement in job_path]


def test_a_changed_compiler_leaves_hot_statements_to_sqlalchemy(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A compiled statement without its prefetch list is not precompiled: one warning for all."""
    changed = [statements.RESCHEDULE.update, statements.STATUS]
    for statement in changed:
        _compiled_without(monkeypatch, statement)
    assert [compat.precompile(s, _PG) for s in changed * 2] == [None] * 4
    (warning,) = _warnings(caplog)
    assert "SQLCompiler" in warning and "ordinary execution" in warning


def test_a_default_no_longer_wrapped_leaves_the_statement_to_sqlalchemy(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An onupdate function without __wrapped__ is not guessed at: SQLAlchemy runs the UPDATE."""
    monkeypatch.delattr(Job.__table__.c.updated_at.onupdate.arg, "__wrapped__")
    assert compat.precompile(statements.RENEW.no_wait, _PG) is None
    assert compat.precompile(statements.PROGRESS.no_wait, _PG) is None
    assert compat.precompile(statements.STATUS, _PG) is not None
    assert len(_warnings(caplog)) == 1


def test_an_expanding_parameter_is_no_change_of_sqlalchemy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A statement that cannot be precompiled by design goes to SQLAlchemy without a warning."""
    statement = sa.select(Job.id).where(Job.id.in_(sa.bindparam("ids", expanding=True)))
    assert compat.precompile(statement, _PG) is None
    assert _warnings(caplog) == []


_NOW = datetime.datetime(2026, 12, 7, 12, 0, tzinfo=datetime.timezone.utc)
#: Every key a job's hot statements take, with a value of its column's type.
_VALUES: dict[str, Any] = {
    "job_id": 7,
    "message_uid": "u" * 32,
    "now": _NOW,
    "lease_until": _NOW,
    "attempt": 2,
    "status": JobStatus.PROCESSED,
    "status_code": 200,
    "response": "body",
    "content_type": "text/plain",
    "progress": 0.5,
    "message": "half",
    "due_at": _NOW,
    "seq": 0,
    **NewRow(
        "u" * 32, "tests.workers:Echo", {"args": [1]}, JobStatus.WAITING, None, None, None,
        None, None, 0, _NOW, _NOW, _NOW,
    )._asdict(),
}  # fmt: skip
_DIALECTS = {
    "psycopg": _PG,
    "sqlite": sqlite.dialect(),
    "pymysql": mysql.pymysql.dialect(),
}


def _comparable(params: Any) -> Any:
    """``params`` with psycopg's JSON wrappers, which do not compare, unwrapped."""
    values = params.items() if isinstance(params, dict) else enumerate(params)
    unwrapped = {key: getattr(value, "obj", value) for key, value in values}
    return unwrapped if isinstance(params, dict) else tuple(unwrapped.values())


def _precompiled_hot_statements(dialect: Any) -> list[compat.Precompiled]:
    """The library's hot statements, precompiled for ``dialect`` (not those of other tests)."""
    found = [compat.precompile(statement, dialect) for statement in statements._HOT.values()]
    return [p for p in found if p is not None and p._required <= _VALUES.keys()]


@pytest.mark.parametrize("driver", _DIALECTS)
def test_precompiled_parameters_are_those_sqlalchemy_binds(
    driver: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Bound by the plan made once, a hot statement's parameters are those SQLAlchemy's
    construct_params gives, processed by their types, in the driver's order."""
    precompiled_statements = _precompiled_hot_statements(_DIALECTS[driver])
    assert len(precompiled_statements) > 10
    for precompiled in precompiled_statements:
        # The columns' onupdate (the time now) the same for both.
        precompiled._defaults = dict.fromkeys(precompiled._defaults, lambda: _NOW)
        precompiled._made_defaults = [
            (name, lambda: _NOW, process) for name, _, process in precompiled._made_defaults
        ]
        planned = _comparable(precompiled.params(_VALUES))
        precompiled._planned = False
        assert planned == _comparable(precompiled.params(_VALUES)), precompiled.sql
    assert _warnings(caplog) == []


def test_a_missing_parameter_is_refused_as_sqlalchemy_refuses_it() -> None:
    """A parameter a precompiled statement needs and is not given raises SQLAlchemy's error."""
    precompiled = compat.precompile(statements.CLAIM.no_wait, _PG)
    assert precompiled is not None
    with pytest.raises(sa.exc.InvalidRequestError, match="'lease_until'"):
        precompiled.params({"job_id": 1, "now": _NOW})


def test_a_plan_that_differs_from_sqlalchemy_s_leaves_binding_to_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Where SQLAlchemy binds otherwise than the plan, its construct_params binds each
    execution's parameters: one warning for all."""
    changed = [statements.STATUS, statements.HELD_NOW]
    for statement in changed:
        compile_ = statement.compile

        def compile_more(*, compile_: Any = compile_, **kw: Any) -> Any:
            compiled = compile_(**kw)
            construct = compiled.construct_params
            monkeypatch.setattr(
                compiled, "construct_params", lambda params: {**construct(params), "extra": 1}
            )
            return compiled

        monkeypatch.setitem(statement.__dict__, "compile", compile_more)
    for statement in changed:
        precompiled = compat.precompile(statement, _PG)
        assert precompiled is not None
        assert precompiled.params(_VALUES)["extra"] == 1
    (warning,) = _warnings(caplog)
    assert "construct_params" in warning


@pytest.mark.integration
def test_a_job_s_hot_statements_run_through_sqlalchemy_when_the_compiler_changed(
    pg_app: Flask,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    internals: Internals,
) -> None:
    """On PostgreSQL, with the internals gone, a job is created, claimed and finished all the
    same, through SQLAlchemy's execution."""
    for statement in statements._HOT.values():
        _compiled_without(monkeypatch, statement, "escaped_bind_names")
    monkeypatch.delattr(Job.__table__.c.updated_at.onupdate.arg, "__wrapped__")
    executed: list[str] = []
    sa.event.listen(
        internals.job_store(pg_app).engine,
        "before_cursor_execute",
        lambda *a: executed.append(a[2]),
    )
    job = Job.create_and_enqueue(workers.Echo, "through sqlalchemy")
    assert reload_job(job.id).status is JobStatus.PROCESSED
    assert any(sql.startswith("INSERT") for sql in executed)
    assert any(sql.startswith("UPDATE") for sql in executed)
    assert len(_warnings(caplog)) == 1


def test_no_record_of_a_transaction_s_connections_commits_the_caller_s_work_along(
    session: scoped_session[Any],
    job_store: JobStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Without SessionTransaction._connections, a job is stored through the session, so
    the caller's own statements are committed with it, as when they are known."""
    store_ = job_store
    # As on a network database: a job alone is stored in one autocommitted INSERT.
    monkeypatch.setattr(store_, "autocommit", True)
    get_transaction = Session.get_transaction
    monkeypatch.setattr(
        Session,
        "get_transaction",
        lambda self: (
            None if (found := get_transaction(self)) is None else _Without(found, "_connections")
        ),
    )
    other = add_job(status=JobStatus.WAITING).id
    for _ in range(2):
        session.execute(sa.update(Job).where(Job.id == other).values(worker="tests.workers:Sleep"))
        job = Job.create_and_enqueue(workers.Echo, "along")
        session.rollback()  # nothing left to roll back: it was committed
        assert reload_job(job.id).status is JobStatus.PROCESSED
        assert reload_job(other).worker == "tests.workers:Sleep"
    (warning,) = _warnings(caplog)
    assert "SessionTransaction._connections" in warning


def _recipe(app: Flask) -> Celery:
    """The Flask documentation's Celery recipe: a Celery app of its own replaces the library's."""
    celery_app = Celery(app.name, set_as_current=False)
    celery_app.config_from_object(app.config["CELERY"])
    app.extensions["celery"] = celery_app
    return celery_app


def test_without_celery_s_finalize_hook_a_celery_command_adopts_the_recipe_s_app(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """With celery._state.connect_on_app_finalize gone, the Celery app that replaced the
    library's gets its tasks when a celery command (a worker) starts on it."""
    monkeypatch.delattr(celery._state, "connect_on_app_finalize")
    monkeypatch.setattr(celery._state, "_on_app_finalizers", set())
    monkeypatch.setattr(celery.signals, "import_modules", Signal(name="import_modules"))
    compat.on_every_app_finalized(_adopt)
    compat.on_every_app_finalized(_adopt)
    app = make_app()
    celery_app = _recipe(app)
    celery_app.finalize()
    assert PROCESS_TASK not in celery_app.tasks
    celery.signals.import_modules.send(sender=celery_app)
    assert PROCESS_TASK in celery_app.tasks
    with app.app_context():
        assert app.extensions["celery"] is celery_app
        job = Job.create_and_enqueue(workers.Echo, "adopted")
        assert reload_job(job.id).status is JobStatus.PROCESSED
    (warning,) = _warnings(caplog)
    assert "connect_on_app_finalize" in warning


def _wait_until_ended(app: Flask, job_id: int, timeout: float = 15) -> JobStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with app.app_context():
            status = reload_job(job_id).status
        if status.finished:
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still pending after {timeout} s")


@pytest.fixture
def pool_cache() -> Iterator[None]:
    """The embedded pool made afresh for the test, and again after it."""
    compat.daemon_thread_pool.cache_clear()
    yield
    compat.daemon_thread_pool.cache_clear()


@pytest.mark.usefixtures("pool_cache")
def test_without_celery_s_base_pool_the_embedded_worker_runs_on_celery_s_threads(
    make_app: AppFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    internals: Internals,
) -> None:
    """With BasePool gone, embedded jobs run on Celery's thread pool, and AsyncResult.get()
    still works in the web process."""
    # Celery's own modules, imported before, keep the name they imported.
    assert celery.concurrency.thread.TaskPool and celery.worker.request.Request
    monkeypatch.delattr(celery.concurrency.base, "BasePool")
    app = make_app(CELERY={})
    with app.app_context():
        ids = [Job.create_and_enqueue(workers.Echo, n).id for n in range(3)]
    assert {_wait_until_ended(app, job_id) for job_id in ids} == {JobStatus.PROCESSED}
    embedded = internals.embedded_worker(app)
    assert type(embedded._controller.pool).__name__ == "ThreadPool"
    celery_app = app.extensions["celery"]
    celery_app.conf.task_always_eager = True

    @celery_app.task(shared=False)  # type: ignore[untyped-decorator]
    def add(a: int, b: int) -> int:
        return a + b

    assert add.delay(2, 3).get(timeout=5) == 5
    embedded.stop()
    assert compat.daemon_thread_pool() is compat.daemon_thread_pool()
    (warning,) = _warnings(caplog)
    assert "BasePool" in warning


def test_without_anon_nodename_the_origin_is_made_the_same_way(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A message names the same origin without Celery's helper."""
    expected = compat.anon_nodename()
    monkeypatch.delattr(celery.utils.nodenames, "anon_nodename")
    assert [compat.anon_nodename() for _ in range(2)] == [expected] * 2
    assert len(_warnings(caplog)) == 1


def _redis_celery() -> Celery:
    app = Celery("compat-test", broker=REDIS_URL, set_as_current=False)

    @app.task(name=PROCESS_TASK, shared=False, ignore_result=True)  # type: ignore[untyped-decorator]
    def process_job(job_id: int) -> None: ...

    return app


@pytest.mark.parametrize("change", ["removed", "reshaped"])
def test_a_changed_redis_channel_sends_with_apply_async(
    make_app: AppFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    change: str,
) -> None:
    """Without kombu's _q_for_pri as it was, no message is pushed directly: apply_async sends it."""
    if change == "removed":
        monkeypatch.delattr(kombu.transport.redis.Channel, "_q_for_pri")
    else:
        monkeypatch.setattr(kombu.transport.redis.Channel, "_q_for_pri", lambda self, queue: queue)
    # Receivers of the publish signals, which other tests may leave, would send
    # every message through apply_async anyway.
    monkeypatch.setattr(celery.signals.before_task_publish, "receivers", [])
    monkeypatch.setattr(celery.signals.after_task_publish, "receivers", [])
    assert sender_for(_redis_celery(), "far-test-compat") is None
    app = make_app(CELERY={"broker_url": REDIS_URL})
    sent: list[tuple[Any, ...]] = []
    task = app.extensions["celery"].tasks[PROCESS_TASK]
    monkeypatch.setattr(task, "apply_async", lambda args, **options: sent.append(args))
    with app.app_context():
        job_id = Job.create_and_enqueue(workers.Echo, "sent").id
    assert sent == [(job_id,)]
    (warning,) = _warnings(caplog)
    assert "_q_for_pri" in warning and "apply_async" in warning


def test_the_installed_releases_have_every_internal(
    app: Flask,
    session: scoped_session[Any],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """No fallback is needed with the releases installed: CI runs this against the newest,
    so that a release that changes an internal fails there before it degrades a deployment."""
    for statement in statements._HOT.values():
        compat.precompile(statement, _PG)
    orm_session = session()
    orm_session.execute(sa.select(1))
    assert compat.transaction_used_connection(orm_session.get_transaction())
    monkeypatch.setattr(celery._state, "_on_app_finalizers", set())
    compat.on_every_app_finalized(lambda celery_app: None)
    compat.daemon_thread_pool.cache_clear()
    assert compat.daemon_thread_pool().__name__ == "DaemonThreadPool"
    assert compat.anon_nodename()
    assert compat.redis_channel_fits(kombu.transport.redis.Channel)
    assert _warnings(caplog) == []
