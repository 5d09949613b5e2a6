"""Connections kept by threads: one per thread up to a limit, given back, dropped, never forked."""

from __future__ import annotations

import gc
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from flask_async_request.connections import KeptConnections


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[sa.Engine]:
    """An engine with a queue pool of five connections."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'kept.db'}", poolclass=sa.pool.QueuePool)
    yield engine
    engine.dispose()


def in_thread(kept: KeptConnections) -> tuple[Any, bool]:
    """What ``kept.take()`` gives another thread, which then ends."""
    found: list[tuple[Any, bool]] = []
    thread = threading.Thread(target=lambda: found.append(kept.take()))
    thread.start()
    thread.join()
    return found[0]


def test_a_thread_keeps_its_connection(engine: sa.Engine) -> None:
    """A thread's second statement gets the connection of its first, with no checkout."""
    kept = KeptConnections(engine.raw_connection, 4)
    first, kept_first = kept.take()
    second, kept_second = kept.take()
    assert kept_first and kept_second
    assert second is first
    assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]


def test_threads_past_the_limit_take_and_give_back(engine: sa.Engine) -> None:
    """Past ``limit`` keeping threads, a thread's connection is not kept."""
    kept = KeptConnections(engine.raw_connection, 1)
    assert kept.take()[1]
    connection, keeps = in_thread(kept)
    assert not keeps
    connection.close()
    assert kept.kept == 1


def test_a_thread_that_ends_gives_its_connection_back(engine: sa.Engine) -> None:
    """A thread (or greenlet) that ends returns its kept connection to the pool."""
    kept = KeptConnections(engine.raw_connection, 4)
    connection, keeps = in_thread(kept)
    del connection
    gc.collect()
    assert keeps
    assert kept.kept == 0
    assert engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_drop_all_drops_other_threads_connections_at_their_next_use(engine: sa.Engine) -> None:
    """After drop_all (a lost connection, a dispose), a thread's kept connection is closed."""
    kept = KeptConnections(engine.raw_connection, 4)
    took, go_on = threading.Event(), threading.Event()
    found: list[Any] = []

    def thread() -> None:
        found.append(kept.take()[0].dbapi_connection)
        took.set()
        go_on.wait()
        found.append(kept.take()[0].dbapi_connection)

    worker = threading.Thread(target=thread)
    worker.start()
    took.wait()
    kept.drop_all()
    go_on.set()
    worker.join()
    assert found[1] is not found[0]
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        found[0].execute("SELECT 1")


def test_drop_closes_this_thread_s_connection(engine: sa.Engine) -> None:
    """drop() invalidates the thread's connection; its next statement checks out afresh."""
    kept = KeptConnections(engine.raw_connection, 4)
    first = kept.take()[0].dbapi_connection
    kept.drop()
    assert kept.kept == 0
    assert kept.take()[0].dbapi_connection is not first


@pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork here")
def test_a_forked_child_keeps_nothing_of_its_parent(engine: sa.Engine) -> None:
    """A child never uses the connection its parent kept, nor keeps one."""
    kept = KeptConnections(engine.raw_connection, 4)
    parents = kept.take()[0]
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's verdict is its exit status
        connection, keeps = kept.take()
        os._exit(0 if connection is not parents and not keeps else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_connection_kept_past_its_age_goes_back_to_the_pool(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past ``max_age`` (the pool's recycling age) the thread takes a connection anew."""
    now = [1000.0]
    monkeypatch.setattr("flask_async_request.connections.time.monotonic", lambda: now[0])
    kept = KeptConnections(engine.raw_connection, 4, max_age=60)
    first, _ = kept.take()
    now[0] += 59
    assert kept.take()[0] is first
    now[0] += 2
    second, keeps = kept.take()
    assert keeps and second is not first
    assert first.dbapi_connection is None  # given back, not left open
    assert kept.kept == 1
    assert engine.pool.checkedout() == 1  # type: ignore[attr-defined]


def test_a_connection_dropped_with_the_others_is_closed_even_past_its_age(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After drop_all, an old kept connection is invalidated, not handed back to the pool."""
    now = [1000.0]
    monkeypatch.setattr("flask_async_request.connections.time.monotonic", lambda: now[0])
    kept = KeptConnections(engine.raw_connection, 4, max_age=60)
    first, _ = kept.take()
    record = first._connection_record
    opened = record.dbapi_connection
    with kept._lock:
        kept._generation += 1  # another thread's lost connection: every kept one is stale
    now[0] += 120
    second, keeps = kept.take()
    assert keeps and second is not first
    assert record.dbapi_connection is not opened  # invalidated, so never checked out again


def test_a_thread_keeps_one_cursor_on_its_connection(engine: sa.Engine) -> None:
    """A thread's kept connection has one cursor for all its statements; a dropped
    connection's cursor goes with it."""
    kept = KeptConnections(engine.raw_connection, 4)
    kept.take()
    cursor = kept.cursor()
    cursor.execute("SELECT 1")
    assert kept.take()[1] and kept.cursor() is cursor
    kept.drop()
    kept.take()
    assert kept.cursor() is not cursor
