"""One read of a job's row for all the long polls its end woke."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from flask import Flask, current_app

from flask_async_request import JobStatus
from flask_async_request import shared_reads as module
from flask_async_request.shared_reads import FreshReads, SharedReads
from flask_async_request.values import utcnow
from tests.conftest import INTERNALS, add_job


def _reads(answer: str = "ended") -> tuple[SharedReads[str], list[int]]:
    """Shared reads over a row that reads as ``answer``, and the ids each read asked for."""
    asked: list[int] = []

    def read(job_id: int) -> str:
        asked.append(job_id)
        return answer

    return SharedReads(read, lambda reply: reply == "ended"), asked


def test_an_ended_job_read_once_is_shared() -> None:
    """A second request woken by the same end takes the first one's read."""
    reads, asked = _reads()
    assert reads.read(1) == "ended"
    assert reads.read(1) == "ended"
    assert asked == [1]


def test_a_pending_read_is_never_shared() -> None:
    """A job still pending is read again by each request: its answer could be stale."""
    reads, asked = _reads("pending")
    assert reads.read(1) == "pending"
    assert reads.read(1) == "pending"
    assert asked == [1, 1]
    assert reads.recent_end(1) is None


def test_an_end_is_shared_for_a_while_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """An end read longer ago than SHARED_FOR is read afresh."""
    monkeypatch.setattr(module, "SHARED_FOR", 0.05)
    reads, asked = _reads()
    reads.read(1)
    time.sleep(0.1)
    reads.read(1)
    assert asked == [1, 1]


def test_shared_ends_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past KEEP_AT_MOST ends, those shared long enough ago are forgotten; none stays in flight."""
    reads, _ = _reads()
    for job_id in range(module.KEEP_AT_MOST + 10):
        reads.read(job_id)
    assert len(reads.ended) > module.KEEP_AT_MOST
    assert reads.reading == {}
    monkeypatch.setattr(module, "SHARED_FOR", 0.0)  # every end read so far is old now
    reads.read(-1)
    assert list(reads.ended) == [-1]


def test_a_read_that_raises_lets_the_waiting_requests_read_themselves() -> None:
    """The first reader's error is its own: the requests waiting on it read the row."""
    calls: list[int] = []

    def read(job_id: int) -> str:
        calls.append(job_id)
        if len(calls) == 1:
            raise ConnectionError("lost")
        return "ended"

    reads = SharedReads(read, lambda reply: reply == "ended")
    with pytest.raises(ConnectionError):
        reads.read(1)
    assert reads.reading == {}
    assert reads.read(1) == "ended"


def test_a_shared_end_is_read_without_waiting_for_a_read_in_flight() -> None:
    """Requests woken after the first read of an end take it with nothing to wait for."""
    reads, _ = _reads()
    first = reads.read(1)
    answers: list[Any] = []
    # A later end's read in flight, as its first reader leaves it until done.
    reads.reading[1] = threading.Event()
    reader = threading.Thread(target=lambda: answers.append(reads.read(1)))
    reader.start()
    reader.join(2)
    assert answers == [first]


def test_requests_woken_together_share_the_first_one_s_read(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the first woken request reads the row, the others wait for its answer:
    one read for all of them, and they all go on when it is done."""
    store = INTERNALS.job_store(current_app)
    job_id = add_job(status=JobStatus.PROCESSED, finished_at=utcnow()).id
    reads: list[int] = []
    reading = threading.Event()
    release = threading.Event()
    real = store.fetch_reply

    def slow_read(job: int) -> Any:
        reads.append(job)
        reading.set()
        release.wait(5)
        return real(job)

    monkeypatch.setattr(store, "fetch_reply", slow_read)
    answers: list[Any] = []

    def woken() -> None:
        answers.append(store.shared_reads.read(job_id))

    threads = [threading.Thread(target=woken) for _ in range(20)]
    threads[0].start()
    assert reading.wait(5)
    for thread in threads[1:]:
        thread.start()
    time.sleep(0.2)
    assert answers == []  # all waiting on the one read in flight
    release.set()
    for thread in threads:
        thread.join(5)
    assert reads == [job_id]
    assert len(answers) == 20 and {a.status for a in answers} == {JobStatus.PROCESSED}


# Fresh reads: the event streams' ----------------------------------------------------------


def test_streams_woken_before_a_read_began_share_it() -> None:
    """Many streams woken together make one read; each gets its answer."""
    gate, calls = threading.Event(), []

    def read(job_id: int) -> str:
        calls.append(job_id)
        gate.wait(5)
        return f"row {job_id}"

    reads: FreshReads[str] = FreshReads(read)
    since = time.monotonic()
    answers: list[str] = []
    threads = [
        threading.Thread(target=lambda: answers.append(reads.read(7, since))) for _ in range(20)
    ]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    gate.set()
    for thread in threads:
        thread.join(5)
    assert answers == ["row 7"] * 20
    assert calls == [7]
    assert list(reads.reading) == [7] and reads.reading[7].done.is_set()


def test_a_stream_woken_after_a_read_began_reads_again() -> None:
    """A read begun before a stream was woken may miss its change: that stream reads afresh."""
    gate, calls = threading.Event(), []

    def read(job_id: int) -> int:
        calls.append(job_id)
        gate.wait(5)
        return len(calls)

    reads: FreshReads[int] = FreshReads(read)
    first: list[int] = []
    leader = threading.Thread(target=lambda: first.append(reads.read(1, time.monotonic())))
    leader.start()
    time.sleep(0.1)
    late: list[int] = []
    woken_later = threading.Thread(target=lambda: late.append(reads.read(1, time.monotonic())))
    woken_later.start()
    time.sleep(0.1)
    gate.set()
    leader.join(5)
    woken_later.join(5)
    assert calls == [1, 1]
    assert late == [2]


def test_a_failed_read_is_not_shared() -> None:
    """When the read fails, the streams that waited on it read for themselves."""
    outcomes: list[str | Exception] = [RuntimeError("lost"), "fine"]

    def read(job_id: int) -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            time.sleep(0.2)
            raise outcome
        return outcome

    reads: FreshReads[str] = FreshReads(read)
    since = time.monotonic()
    errors: list[BaseException] = []
    answers: list[str] = []

    def lead() -> None:
        try:
            reads.read(3, since)
        except RuntimeError as e:
            errors.append(e)

    leader = threading.Thread(target=lead)
    leader.start()
    time.sleep(0.05)
    answers.append(reads.read(3, since))
    leader.join(5)
    assert len(errors) == 1 and answers == ["fine"]


def test_a_stream_woken_before_a_read_began_takes_it_once_done() -> None:
    """A read done by the time a stream woken before it runs is still its answer: no read again."""
    calls: list[int] = []

    def read(job_id: int) -> str:
        calls.append(job_id)
        return f"row {job_id} read {len(calls)}"

    reads: FreshReads[str] = FreshReads(read)
    since = time.monotonic()
    first = reads.read(4, since)
    assert [reads.read(4, since) for _ in range(5)] == [first] * 5
    assert calls == [4]
    assert reads.read(4, time.monotonic()) == "row 4 read 2"


def test_a_failed_read_is_not_kept() -> None:
    """A read that raised is forgotten: the next stream reads, even one woken before it."""
    outcomes: list[str | Exception] = [RuntimeError("lost"), "fine"]

    def read(job_id: int) -> str:
        outcome = outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    reads: FreshReads[str] = FreshReads(read)
    since = time.monotonic()
    with pytest.raises(RuntimeError):
        reads.read(2, since)
    assert reads.reading == {}
    assert reads.read(2, since) == "fine"


def test_kept_reads_are_forgotten_after_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reads begun long enough ago are dropped when the next read begins."""
    import flask_async_request.shared_reads as module

    reads: FreshReads[int] = FreshReads(lambda job_id: job_id)
    for job_id in range(10):
        reads.read(job_id, time.monotonic())
    assert len(reads.reading) == 10
    monkeypatch.setattr(module, "SHARED_FOR", 0.0)  # every read so far is old now
    reads.read(99, time.monotonic())
    assert list(reads.reading) == [99]


def test_what_the_takers_of_a_read_derive_is_made_once() -> None:
    """Every taker of one read gets the same derived value, made once per key."""
    made: list[str] = []

    def make(key: str) -> str:
        made.append(key)
        return f"{key} of the read"

    reads: FreshReads[str] = FreshReads(lambda job_id: "row")
    since = time.monotonic()
    takers = [reads.take(1, since) for _ in range(3)]
    derived = [taken.shared("a", lambda: make("a")) for taken in takers]
    assert derived == ["a of the read"] * 3
    assert takers[0].shared("b", lambda: make("b")) == "b of the read"
    assert made == ["a", "b"]
    assert reads.take(1, time.monotonic()).shared("a", lambda: make("a")) == "a of the read"
    assert made == ["a", "b", "a"]


def test_a_refresh_is_taken_by_the_streams_woken_as_of_it() -> None:
    """refresh reads the jobs in one call; streams woken as of its start take it, later ones not."""
    many: list[list[int]] = []
    single: list[int] = []

    def read_many(job_ids: list[int]) -> dict[int, str]:
        many.append(list(job_ids))
        return {job_id: f"row {job_id}" for job_id in job_ids if job_id != 3}

    def read(job_id: int) -> str | None:
        single.append(job_id)
        return "read alone"

    reads: FreshReads[str | None] = FreshReads(read, read_many)
    began = reads.refresh([1, 2, 3])
    assert [reads.read(job_id, began) for job_id in (1, 2, 3)] == ["row 1", "row 2", None]
    assert many == [[1, 2, 3]] and single == []
    assert reads.read(1, time.monotonic()) == "read alone"


def test_a_refresh_keeps_a_newer_read() -> None:
    """A read begun after a refresh began is not replaced by the refresh's older answer."""
    reads: FreshReads[str] = FreshReads(lambda job_id: "newer", lambda job_ids: {1: "older"})
    refreshed = reads.take(1, 0.0)
    gate = threading.Event()

    def read_many(job_ids: list[int]) -> dict[int, str]:
        nonlocal refreshed
        refreshed = reads.take(1, time.monotonic())  # a stream reads meanwhile
        gate.set()
        return {1: "older"}

    reads._read_many = read_many
    reads.refresh([1])
    assert gate.is_set()
    assert reads.reading[1] is refreshed and refreshed.reply == "newer"
