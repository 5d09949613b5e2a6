"""waiting: long polls that hold nothing while they wait, woken by a poller or a listener."""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_async_request import Job, JobStatus
from flask_async_request.store import JobReply, JobStore
from flask_async_request.waiting import Changed, Waiters, read_when_done
from flask_async_request.web import cancel_job
from tests.conftest import INTERNALS, add_job, current_db

#: Longest a test waits for what must happen; a test never passes by reaching it.
PATIENCE = 30.0


def _until(condition: Callable[[], bool]) -> None:
    """Wait until ``condition`` holds; fail the test if it never does."""
    deadline = time.monotonic() + PATIENCE
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)


class Ended:
    """A stand-in check: the job ids marked ended, and each call it answered."""

    def __init__(self) -> None:
        self.ids: set[int] = set()
        self.calls: list[list[int]] = []
        self.called = threading.Event()

    def __call__(self, job_ids: list[int]) -> Iterable[int]:
        self.calls.append(list(job_ids))
        self.called.set()
        return [job_id for job_id in job_ids if job_id in self.ids]


class Reads:
    """The read and reread of one job for read_when_done, counting each."""

    def __init__(self) -> None:
        self.reads = 0
        self.rereads = 0
        self.done = False

    def read(self) -> str:
        self.reads += 1
        return "done" if self.done else "pending"

    def reread(self) -> str:
        self.rereads += 1
        return "done" if self.done else "pending"


def _in_thread(action: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    return thread


# Waiters -------------------------------------------------------------------------------


def test_waiters_need_exactly_one_way_to_learn_of_ends() -> None:
    """Neither listen= nor check=, or both, is a ValueError."""
    with pytest.raises(ValueError, match="exactly one of listen= and check="):
        Waiters()
    with pytest.raises(ValueError, match="exactly one of listen= and check="):
        Waiters(listen=contextlib.nullcontext, check=Ended())  # type: ignore[arg-type]


def test_waiters_are_counted_while_they_wait() -> None:
    """Each waiter counts, two on one job too, until it leaves."""
    waiters = Waiters(check=Ended())
    assert waiters.count == 0
    with waiters.waiting_for(1), waiters.waiting_for(1), waiters.waiting_for(2):
        assert waiters.count == 3
    assert waiters.count == 0


def test_wake_sets_the_events_of_the_jobs_named_only() -> None:
    """wake() wakes the waiters of the jobs named; wake_all() every one."""
    waiters = Waiters(check=Ended())
    with (
        waiters.waiting_for(1) as one,
        waiters.waiting_for(1) as again,
        waiters.waiting_for(2) as two,
    ):
        waiters.wake([1, 3])
        assert one.is_set() and again.is_set()
        assert not two.is_set()
        waiters.wake_all()
        assert two.is_set()


def test_a_waiter_that_left_is_not_woken() -> None:
    """wake() after a waiter left touches nothing of it."""
    waiters = Waiters(check=Ended())
    with waiters.waiting_for(5) as event:
        pass
    waiters.wake([5])
    assert not event.is_set()


# read_when_done ---------------------------------------------------------------------------


def test_a_job_done_already_is_read_once_and_not_waited_for() -> None:
    """A job done before the wait: one read, no reread, no waiter left behind."""
    waiters, reads = Waiters(check=Ended()), Reads()
    reads.done = True
    result = read_when_done(
        waiters, 1, PATIENCE, reads.read, lambda value: value == "done", reads.reread
    )
    assert result == "done"
    assert (reads.reads, reads.rereads) == (1, 0)
    assert waiters.count == 0


def test_at_the_deadline_the_job_is_read_as_it_is_now() -> None:
    """Nothing ends: no reread while waiting, and a last read at the deadline is the answer."""
    ended, reads = Ended(), Reads()
    result = read_when_done(
        Waiters(check=ended), 1, 0.3, reads.read, lambda value: value == "done", reads.reread
    )
    assert result == "pending"
    assert (reads.reads, reads.rereads) == (2, 0)


def test_a_zero_timeout_answers_from_the_first_read() -> None:
    """A wait of 0 reads once and answers, whatever the job's state."""
    reads = Reads()
    result = read_when_done(
        Waiters(check=Ended()), 1, 0, reads.read, lambda value: value == "done", reads.reread
    )
    assert result == "pending"
    assert (reads.reads, reads.rereads) == (1, 0)


def test_the_poller_wakes_a_waiter_whose_job_ended() -> None:
    """When the check reports the job, the waiter rereads it once and answers."""
    ended, reads = Ended(), Reads()
    waiters = Waiters(check=ended)

    def end() -> None:
        _until(lambda: waiters.count == 1)
        reads.done = True
        ended.ids.add(7)

    ender = _in_thread(end)
    result = read_when_done(
        waiters, 7, PATIENCE, reads.read, lambda value: value == "done", reads.reread
    )
    ender.join()
    assert result == "done"
    assert (reads.reads, reads.rereads) == (1, 1)


def test_the_poller_asks_once_for_every_waited_on_job() -> None:
    """Waiters on several jobs share one check that names all of them."""
    ended = Ended()
    waiters = Waiters(check=ended)
    with waiters.waiting_for(1), waiters.waiting_for(2), waiters.waiting_for(2):
        ended.calls.clear()
        _until(lambda: any(sorted(call) == [1, 2] for call in ended.calls))


def test_the_poller_does_not_ask_while_no_one_waits() -> None:
    """With no waiter left, the check is not called (an empty list least of all)."""
    ended = Ended()
    waiters = Waiters(check=ended)
    with waiters.waiting_for(1):
        _until(lambda: bool(ended.calls))
    ended.calls.clear()
    time.sleep(0.5)
    assert ended.calls == []


def test_a_failing_check_wakes_every_waiter(caplog: pytest.LogCaptureFixture) -> None:
    """A check that raises wakes all waiters to look for themselves; it is logged."""
    reads = Reads()

    def check(job_ids: list[int]) -> Iterable[int]:
        reads.done = True
        raise RuntimeError("database gone")

    with caplog.at_level(logging.WARNING, logger="flask_async_request"):
        result = read_when_done(
            Waiters(check=check),
            3,
            PATIENCE,
            reads.read,
            lambda value: value == "done",
            reads.reread,
        )
    assert result == "done"
    assert reads.rereads == 1
    assert "The long-poll check failed; waking every waiter." in caplog.text


# The listener -----------------------------------------------------------------------------


class Channel:
    """A stand-in for a LISTEN connection: the ids put in are announced, in order."""

    def __init__(self) -> None:
        self.announcements: queue.Queue[int | Exception] = queue.Queue()
        self.connections = 0

    @contextlib.contextmanager
    def listen(self) -> Iterator[Callable[[float], Iterator[int]]]:
        self.connections += 1

        def announced(timeout: float) -> Iterator[int]:
            try:
                item = self.announcements.get(timeout=timeout)
            except queue.Empty:
                return
            if isinstance(item, Exception):
                raise item
            yield item

        yield announced


def test_an_announced_end_wakes_its_waiter() -> None:
    """The listener wakes the waiters of the job announced."""
    channel, reads = Channel(), Reads()
    waiters = Waiters(listen=channel.listen)

    def end() -> None:
        _until(lambda: waiters.count == 1)
        reads.done = True
        channel.announcements.put(4)

    _in_thread(end)
    result = read_when_done(
        waiters, 4, PATIENCE, reads.read, lambda value: value == "done", reads.reread
    )
    assert result == "done"
    assert reads.rereads == 1


def test_another_job_s_end_does_not_wake_a_waiter() -> None:
    """An end announced for another job costs the waiter no reread."""
    channel, reads = Channel(), Reads()
    waiters = Waiters(listen=channel.listen)

    def announce_other() -> None:
        _until(lambda: waiters.count == 1)
        channel.announcements.put(99)

    _in_thread(announce_other)
    result = read_when_done(
        waiters, 4, 0.5, reads.read, lambda value: value == "done", reads.reread
    )
    assert result == "pending"
    assert reads.rereads == 0


def test_a_lost_listener_connection_wakes_every_waiter_and_listens_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An end may go unannounced while no one listens: every waiter looks again; it reconnects."""
    channel, reads = Channel(), Reads()
    waiters = Waiters(listen=channel.listen)

    def lose() -> None:
        _until(lambda: waiters.count == 1)
        reads.done = True
        channel.announcements.put(OSError("server closed the connection"))

    _in_thread(lose)
    with caplog.at_level(logging.WARNING, logger="flask_async_request"):
        result = read_when_done(
            waiters, 4, PATIENCE, reads.read, lambda value: value == "done", reads.reread
        )
    assert result == "done"
    assert "The long-poll listener lost its connection" in caplog.text
    _until(lambda: channel.connections == 2)


def test_the_first_waiter_waits_for_the_listener_to_listen() -> None:
    """No end announced between a waiter's first read and the LISTEN can be missed."""
    listening = threading.Event()
    release = threading.Event()
    channel = Channel()

    @contextlib.contextmanager
    def slow_listen() -> Iterator[Callable[[float], Iterator[int]]]:
        listening.set()
        release.wait(PATIENCE)
        with channel.listen() as announced:
            yield announced

    waiters = Waiters(listen=slow_listen)
    registered = threading.Event()

    def wait() -> None:
        with waiters.waiting_for(1):
            registered.set()

    _in_thread(wait)
    assert listening.wait(PATIENCE)
    # The listener is connecting: the waiter is not registered yet.
    time.sleep(0.2)
    assert not registered.is_set()
    release.set()
    assert registered.wait(PATIENCE)


# On SQLite: the store's waiters, woken by its one query -----------------------------------


@pytest.fixture
def store(app: Flask) -> JobStore:
    """The app's job store, whose waiters poll on SQLite."""
    return INTERNALS.job_store(app)


def _ended_or_gone(reply: JobReply | None) -> bool:
    return reply is None or reply.status.finished


def _wait(store: JobStore, job_id: int, timeout: float) -> JobReply | None:
    reply: JobReply | None = read_when_done(
        store.waiters(), job_id, timeout, lambda: store.fetch_reply(job_id), _ended_or_gone
    )
    return reply


def test_on_sqlite_a_job_ended_elsewhere_wakes_the_waiter(app: Flask, store: JobStore) -> None:
    """A job cancelled by another thread ends the wait with its new state."""
    job_id = add_job().id
    assert not store.listen

    def cancel() -> None:
        _until(lambda: store.waiters().count == 1)
        with app.app_context():
            cancel_job(job_id)

    canceller = _in_thread(cancel)
    reply = _wait(store, job_id, PATIENCE)
    canceller.join()
    assert reply is not None
    assert reply.status is JobStatus.CANCELLED


def test_on_sqlite_a_job_deleted_meanwhile_ends_the_wait_with_nothing(
    app: Flask, store: JobStore
) -> None:
    """A job deleted while waited on is reported gone (None)."""
    job_id = add_job().id

    def delete() -> None:
        _until(lambda: store.waiters().count == 1)
        with app.app_context():
            session = current_db().session
            session.execute(sa.delete(Job).where(Job.id == job_id))
            session.commit()

    deleter = _in_thread(delete)
    assert _wait(store, job_id, PATIENCE) is None
    deleter.join()


def test_on_sqlite_a_pending_job_answers_at_the_timeout(app: Flask, store: JobStore) -> None:
    """A job still waiting at the deadline is answered as it is: waiting."""
    job_id = add_job().id
    reply = _wait(store, job_id, 0.3)
    assert reply is not None
    assert reply.status is JobStatus.WAITING
    assert store.waiters().count == 0


# Watchers: the event streams ---------------------------------------------------------------


def test_an_announced_change_wakes_watchers_not_long_polls() -> None:
    """A Changed id wakes the job's watchers; its long polls sleep on; an end wakes both."""
    channel = Channel()
    waiters = Waiters(listen=channel.listen)
    with waiters.waiting_for(3) as waiting, waiters.watching(3) as watching:
        channel.announcements.put(Changed(3))
        assert watching.wait(PATIENCE)
        assert not waiting.is_set()
        watching.clear()
        channel.announcements.put(3)
        assert waiting.wait(PATIENCE) and watching.wait(PATIENCE)
    assert waiters.count == 0


def test_the_poller_asks_which_watched_jobs_changed() -> None:
    """Without LISTEN, watchers are woken by the changes check, long polls by the end check."""
    ended, changed = Ended(), Ended()
    waiters = Waiters(check=ended, changes=changed)
    with waiters.watching(5) as watching:
        changed.ids.add(5)
        assert watching.wait(PATIENCE)
    assert [5] in changed.calls
    assert all(5 not in ids for ids in ended.calls)


def test_store_reports_each_change_of_a_watched_job(app: Flask) -> None:
    """The store's changes check: new ids count as changed, then only rows that changed, or gone."""
    with app.app_context():
        first, second = add_job(), add_job()
        ids = [first.id, second.id]
        store = INTERNALS.job_store(app)
        assert store._changed(ids) == ids
        assert store._changed(ids) == []
        with current_db().engine.begin() as conn:
            conn.execute(sa.update(Job).where(Job.id == first.id).values(progress=0.5))
        assert store._changed(ids) == [first.id]
        with current_db().engine.begin() as conn:
            conn.execute(sa.delete(Job).where(Job.id == second.id))
        assert store._changed(ids) == [second.id]
        assert store._changed(ids) == []


def test_watchers_woken_together_are_told_one_time() -> None:
    """One wake sets each watcher's event with the same time, so they can share a read."""
    channel = Channel()
    waiters = Waiters(listen=channel.listen)
    with waiters.watching(8) as first, waiters.watching(8) as second:
        before = time.monotonic()
        channel.announcements.put(Changed(8))
        assert first.wait(PATIENCE) and second.wait(PATIENCE)
        assert first.at == second.at >= before


class Refresh:
    """A stand-in refresh: the ids it was asked to read, and when each read began."""

    def __init__(self, *, gate: threading.Event | None = None, fails: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.began: list[float] = []
        self.gate, self.fails = gate, fails

    def __call__(self, job_ids: list[int]) -> float:
        self.calls.append(sorted(job_ids))
        self.began.append(time.monotonic())
        if self.gate is not None:
            self.gate.wait(PATIENCE)
        if self.fails:
            raise RuntimeError("the database is away")
        return self.began[-1]


def test_watchers_are_woken_once_their_job_is_read_for_them() -> None:
    """With refresh, a change is read first; its watchers are woken as of that read's start."""
    channel, gate = Channel(), threading.Event()
    refresh = Refresh(gate=gate)
    waiters = Waiters(listen=channel.listen, refresh=refresh)
    with waiters.watching(4) as watching:
        channel.announcements.put(Changed(4))
        _until(lambda: refresh.calls == [[4]])
        assert not watching.wait(0.1)
        gate.set()
        assert watching.wait(PATIENCE)
        assert watching.at == refresh.began[0]


def test_an_end_wakes_long_polls_without_waiting_for_the_refresh() -> None:
    """Long polls are woken as the end arrives; the watchers of the job once it is read."""
    channel, gate = Channel(), threading.Event()
    refresh = Refresh(gate=gate)
    waiters = Waiters(listen=channel.listen, refresh=refresh)
    with waiters.waiting_for(6) as waiting, waiters.watching(6) as watching:
        channel.announcements.put(6)
        assert waiting.wait(PATIENCE)
        _until(lambda: refresh.calls == [[6]])
        assert not watching.is_set()
        gate.set()
        assert watching.wait(PATIENCE)


def test_changes_announced_during_a_refresh_are_read_together_after_it() -> None:
    """Jobs announced while a read runs are read in one next read; unwatched ones not at all."""
    channel, gate = Channel(), threading.Event()
    refresh = Refresh(gate=gate)
    waiters = Waiters(listen=channel.listen, refresh=refresh)
    with waiters.watching(1), waiters.watching(2) as second, waiters.watching(3) as third:
        channel.announcements.put(Changed(1))
        _until(lambda: refresh.calls == [[1]])
        for job_id in (2, 3, 99):
            channel.announcements.put(Changed(job_id))
        _until(lambda: waiters._to_refresh == {2, 3})
        gate.set()
        assert second.wait(PATIENCE) and third.wait(PATIENCE)
        assert refresh.calls == [[1], [2, 3]]


def test_a_failed_refresh_still_wakes_the_watchers(caplog: pytest.LogCaptureFixture) -> None:
    """When the read fails, the watchers are woken all the same, to read for themselves."""
    channel = Channel()
    waiters = Waiters(listen=channel.listen, refresh=Refresh(fails=True))
    with waiters.watching(9) as watching:
        channel.announcements.put(Changed(9))
        assert watching.wait(PATIENCE)
    assert "Reading the changed jobs for their streams failed" in caplog.text


def test_a_watchers_long_wait_holds_no_timer_and_ends_on_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The ticker ends a watcher's long wait; only its last moments are a timed wait."""
    monkeypatch.setattr("flask_async_request.waiting.TICK", 0.05)
    waiters = Waiters(check=lambda job_ids: [])
    timeouts: list[float | None] = []
    with waiters.watching(1) as woken:
        wait = woken.wait

        def recorded(timeout: float | None = None) -> bool:
            timeouts.append(timeout)
            return wait(timeout)

        monkeypatch.setattr(woken, "wait", recorded)
        started = time.monotonic()
        assert waiters.sleep(woken, 0.5) is False
        assert time.monotonic() - started >= 0.5
    assert timeouts[0] is None
    assert all(timeout is None or timeout < 0.1 for timeout in timeouts)


def test_a_change_ends_a_watchers_long_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """Woken by a change, a long wait ends at once and says so."""
    monkeypatch.setattr("flask_async_request.waiting.TICK", 0.05)
    waiters = Waiters(check=lambda job_ids: [])
    with waiters.watching(1) as woken, waiters.watching(1) as other:
        threading.Timer(0.3, lambda: waiters.wake_watchers([1])).start()
        started = time.monotonic()
        assert waiters.sleep(woken, PATIENCE) is True
        assert time.monotonic() - started < PATIENCE
        assert other.at > 0


def test_a_wake_whose_time_the_stream_cleared_still_ends_its_long_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Set by a change whose ``at`` the stream zeroed as it read: a wake, not a tick."""
    monkeypatch.setattr("flask_async_request.waiting.TICK", 0.05)
    waiters = Waiters(check=lambda job_ids: [])
    with waiters.watching(1) as woken:
        # A change landed between the stream's read of ``at`` and its zeroing.
        woken.set_at(time.monotonic())
        woken.at = 0.0
        started = time.monotonic()
        assert waiters.sleep(woken, 1.0) is True
        assert time.monotonic() - started < 0.5


def test_a_ticker_that_could_not_start_is_started_by_the_next_wait(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A thread limit met once does not leave every later long wait without its ticker."""
    monkeypatch.setattr("flask_async_request.waiting.TICK", 0.05)
    waiters = Waiters(check=lambda job_ids: [])
    real_start = threading.Thread.start
    refusals = [RuntimeError("can't start new thread")]

    def start(thread: threading.Thread) -> None:
        if thread.name == "flask-async-request-ticker" and refusals:
            raise refusals.pop()
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    with waiters.watching(1) as woken:
        with pytest.raises(RuntimeError):
            waiters.sleep(woken, 0.5)
        started = time.monotonic()
        assert waiters.sleep(woken, 0.5) is False
        assert 0.5 <= time.monotonic() - started < PATIENCE
