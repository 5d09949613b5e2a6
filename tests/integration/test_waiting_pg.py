"""waiting on PostgreSQL: the store's waiters LISTEN; a NOTIFY of a job's id wakes its waiters."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_async_request import JobStatus
from flask_async_request.statements import CHANNEL
from flask_async_request.store import JobReply, JobStore
from flask_async_request.waiting import read_when_done
from flask_async_request.web import cancel_job
from tests.conftest import INTERNALS, add_job

pytestmark = pytest.mark.integration

#: Longest a test waits for what must happen; a test never passes by reaching it.
PATIENCE = 30.0


def _until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


@pytest.fixture
def store(pg_app: Flask) -> JobStore:
    """The PostgreSQL app's job store, whose waiters LISTEN."""
    store = INTERNALS.job_store(pg_app)
    assert store.listen
    return store


def _notify(store: JobStore, payload: str) -> None:
    with store.engine.connect() as connection:
        connection.execute(sa.select(sa.func.pg_notify(CHANNEL, payload)))
        connection.commit()


def test_a_notify_of_the_job_s_id_wakes_its_waiter(store: JobStore) -> None:
    """A NOTIFY on the channel, with no change to the row, has the waiter read it again."""
    job_id = add_job().id
    rereads: list[JobReply | None] = []

    def reread() -> JobReply | None:
        reply = store.fetch_reply(job_id)
        rereads.append(reply)
        return reply

    def notify() -> None:
        _until(lambda: store.waiters().count == 1)
        _notify(store, str(job_id))

    notifier = threading.Thread(target=notify, daemon=True)
    notifier.start()
    # Done at the first reread: only a wake gets there before the deadline.
    reply = read_when_done(
        store.waiters(),
        job_id,
        PATIENCE,
        lambda: store.fetch_reply(job_id),
        lambda _: bool(rereads),
        reread,
    )
    notifier.join()
    assert len(rereads) == 1
    assert reply is not None and reply.status is JobStatus.WAITING


def test_a_notify_of_anything_else_wakes_no_one(store: JobStore) -> None:
    """Another job's id, or a payload that is no id, costs the waiter no reread."""
    job_id = add_job().id
    rereads: list[JobReply | None] = []

    def notify() -> None:
        _until(lambda: store.waiters().count == 1)
        _notify(store, "not a job id")
        _notify(store, str(job_id + 1000))

    notifier = threading.Thread(target=notify, daemon=True)
    notifier.start()
    reply = read_when_done(
        store.waiters(),
        job_id,
        1.0,
        lambda: store.fetch_reply(job_id),
        lambda reply: reply is None or reply.status.finished,
        lambda: rereads.append(store.fetch_reply(job_id)),
    )
    notifier.join()
    assert rereads == []
    assert reply is not None and reply.status is JobStatus.WAITING


def test_an_ending_statement_wakes_the_waiter_without_a_poll(
    pg_app: Flask, store: JobStore
) -> None:
    """A cancel in another connection announces the end: the waiter reads it once, cancelled."""
    job_id = add_job().id
    rereads: list[JobReply | None] = []

    def reread() -> JobReply | None:
        reply = store.fetch_reply(job_id)
        rereads.append(reply)
        return reply

    def cancel() -> None:
        _until(lambda: store.waiters().count == 1)
        with pg_app.app_context():
            cancel_job(job_id)

    canceller = threading.Thread(target=cancel, daemon=True)
    canceller.start()
    reply = read_when_done(
        store.waiters(),
        job_id,
        PATIENCE,
        lambda: store.fetch_reply(job_id),
        lambda reply: reply is None or reply.status.finished,
        reread,
    )
    canceller.join()
    assert reply is not None and reply.status is JobStatus.CANCELLED
    assert len(rereads) == 1
