"""The Worker base class, its reply forms and its resolution by dotted path."""

from __future__ import annotations

import re
from datetime import timedelta
from http import HTTPStatus
from typing import Any

import pytest

from flask_async_request.exceptions import InvalidReply, JobCancelled, WorkerResolutionError
from flask_async_request.worker import (
    CallableBool,
    Worker,
    fraction_of,
    normalize_reply,
    resolve_worker,
    seconds_of,
    status_code_of,
    worker_path,
)
from tests import workers


class Link:
    """A run that records the reports it is given and answers whether it was cancelled."""

    def __init__(self, cancelled: bool = False) -> None:
        self.reports: list[tuple[float, str | None]] = []
        self.is_cancelled = cancelled

    def report(self, fraction: float, message: str | None) -> None:
        self.reports.append((fraction, message))

    def cancelled(self) -> bool:
        return self.is_cancelled


def linked(link: Link) -> workers.Echo:
    worker = workers.Echo()
    worker._run = link
    return worker


# Reply forms ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (200, 200),
        (201, 201),
        ("ok", 200),
        ("created", 201),
        ("bad_request", 400),
        ("not_found", 404),
        ("unprocessable_entity", 422),
        ("payload_too_large", 413),
        ("content_too_large", 413),
        ("uri_too_long", 414),
        ("range_not_satisfiable", 416),
        ("unprocessable_content", 422),
        ("internal_server_error", 500),
        ("OK", 200),
        ("Not_Found", 404),
        (":accepted", 202),
        (" ok ", 200),
        (HTTPStatus.CREATED, 201),
    ],
)
def test_status_as_int_http_status_or_name(status: Any, code: int) -> None:
    """Ints, HTTPStatus members and status names (the Rails symbols) give their code."""
    assert status_code_of(status) == code


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (True, "status True is a bool"),
        (200.0, "status 200.0 is a float"),
        (None, "status None is a NoneType"),
        (99, "status 99 is outside the HTTP range 100-599"),
        (600, "status 600 is outside the HTTP range 100-599"),
        ("teapot_ish", "status 'teapot_ish' is not a known HTTP status name"),
    ],
)
def test_a_status_that_is_no_http_status_is_refused(status: Any, message: str) -> None:
    """Anything but an HTTP status is an InvalidReply naming what was given."""
    with pytest.raises(InvalidReply, match=message):
        status_code_of(status)


def test_a_reply_is_normalized_to_code_body_and_content_type() -> None:
    """(status, body) and (status, body, content_type), as tuple or list, come back checked."""
    assert normalize_reply(("created", "made")) == (201, "made", None)
    assert normalize_reply([200, "<p>", "text/html"]) == (200, "<p>", "text/html")
    assert normalize_reply((200, "x", None)) == (200, "x", None)


def test_a_none_body_becomes_empty() -> None:
    """A None body is stored as ''."""
    assert normalize_reply((204, None)) == (204, "", None)


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (42, "returned 42; expected a (status, body) pair"),
        ([200], "returned [200]; expected a (status, body) pair"),
        ((200, "a", "text/plain", "x"), "expected a"),
        (None, "returned None; expected a"),
        ((200, "a", 5), "returned content type 5; expected a str"),
        ((200, {"a": 1}), "body of type dict; expected a str"),
        ((200, b"bytes"), "body of type bytes; expected a str"),
        ((200, "a\x00b"), "returned a body that cannot be stored"),
        ((200, "a", "text/\x00plain"), "returned a content type that cannot be stored"),
        ((200, "a", "t" * 1000), "returned a content type that cannot be stored"),
        (("nope", "a"), "not a known HTTP status name"),
    ],
)
def test_a_wrong_reply_is_refused(reply: Any, message: str) -> None:
    """A reply of the wrong shape, types or text is an InvalidReply saying what is wrong."""
    with pytest.raises(InvalidReply, match=re.escape(message)):
        normalize_reply(reply)


def test_a_long_returned_value_is_cut_in_the_error() -> None:
    """The error quotes a returned value short, not whole."""
    with pytest.raises(InvalidReply) as info:
        normalize_reply("x" * 10_000)
    assert len(str(info.value)) < 500


# Resolution by dotted path -------------------------------------------------------------


def test_worker_path_of_a_module_level_worker() -> None:
    """A Worker subclass at module level gives module:QualName, which resolves back to it."""
    assert worker_path(workers.Echo) == "tests.workers:Echo"
    assert resolve_worker("tests.workers:Echo") is workers.Echo


@pytest.mark.parametrize("given", [workers.NotAWorker, "tests.workers:Echo", len, Worker])
def test_worker_path_refuses_what_is_no_worker_subclass(given: Any) -> None:
    """Anything but a subclass of Worker (Worker itself included) is a TypeError."""
    with pytest.raises(TypeError, match="subclass"):
        worker_path(given)


def test_worker_path_refuses_a_class_defined_in_a_function() -> None:
    """A local class cannot be imported by a worker process: a ValueError saying so."""

    class Local(Worker):
        pass

    with pytest.raises(ValueError, match="defined inside a function"):
        worker_path(Local)


def test_worker_path_refuses_a_class_its_path_does_not_resolve_to() -> None:
    """A class shadowed at its path by another one is a ValueError."""

    class Echo(Worker):
        pass

    Echo.__module__, Echo.__qualname__ = "tests.workers", "Echo"
    with pytest.raises(ValueError, match="resolves to another class"):
        worker_path(Echo)


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("nocolon", "not a worker path of the form"),
        (":Echo", "not a worker path of the form"),
        ("tests.workers:", "not a worker path of the form"),
        ("no.such.module:X", "module 'no.such.module' cannot be imported"),
        ("tests.workers:Missing", "does not exist"),
        ("tests.workers:Echo.missing", "does not exist"),
        ("os:system", "not a subclass of flask_async_request.Worker"),
        ("tests.workers:NotAWorker", "not a subclass"),
        ("flask_async_request:Worker", "not a subclass"),
        ("tests.workers:EFFECTS_DIR_ENV", "not a subclass"),
    ],
)
def test_resolve_worker_refuses_anything_but_a_worker(path: str, message: str) -> None:
    """A path to no Worker subclass is a WorkerResolutionError saying why."""
    with pytest.raises(WorkerResolutionError, match=message):
        resolve_worker(path)


# Progress, cancellation ----------------------------------------------------------------


def test_progress_reports_a_fraction_to_the_run() -> None:
    """progress(done, total, message) reports done/total and the message."""
    link = Link()
    worker = linked(link)
    worker.progress(3, 4, "three quarters")
    worker.progress(0.5)
    assert link.reports == [(0.75, "three quarters"), (0.5, None)]


def test_progress_is_clamped_to_zero_and_one() -> None:
    """Numbers past either end are reported as 0 or 1."""
    link = Link()
    worker = linked(link)
    worker.progress(-2)
    worker.progress(7, 5)
    assert [fraction for fraction, _ in link.reports] == [0.0, 1.0]


def test_a_long_progress_message_is_cut() -> None:
    """A message longer than the column is cut to 255 characters; a non-str is made one."""
    link = Link()
    worker = linked(link)
    worker.progress(0.1, message="m" * 1000)
    worker.progress(0.2, message=42)  # type: ignore[arg-type]
    assert link.reports == [(0.1, "m" * 255), (0.2, "42")]


@pytest.mark.parametrize("message", ["nul \x00 here", "lone \ud800 surrogate"])
def test_an_unstorable_progress_message_is_a_value_error(message: str) -> None:
    """A message no database can store raises ValueError, and nothing is reported."""
    link = Link()
    with pytest.raises(ValueError, match="progress message cannot be stored"):
        linked(link).progress(0.5, message=message)
    assert link.reports == []


@pytest.mark.parametrize(
    ("done", "total", "message"),
    [
        (float("nan"), None, "done is nan"),
        (float("inf"), None, "done is inf"),
        (1, 0, "total is 0"),
        (1, -3, "total is -3"),
        (1, float("nan"), "total is nan"),
        ("half", None, "finite number"),
        (True, None, "done is True"),
    ],
)
def test_bad_progress_is_a_value_error(done: Any, total: Any, message: str) -> None:
    """Bad numbers raise ValueError naming them."""
    with pytest.raises(ValueError, match=message):
        workers.Echo().progress(done, total)


def test_fraction_of() -> None:
    """done alone is a fraction; done of total is divided; both clamped."""
    assert fraction_of(0.25, None) == 0.25
    assert fraction_of(1, 8) == 0.125
    assert fraction_of(9, 3) == 1.0
    assert fraction_of(-1, None) == 0.0


def test_progress_outside_a_run_is_harmless() -> None:
    """Calling execute directly (in a unit test of a worker) reports nowhere."""
    worker = workers.TightLoop()
    assert worker.execute(10) == (200, "10")
    assert not worker.cancelled


def test_cancelled_reads_the_run() -> None:
    """cancelled is what the run says, read as a bool or called."""
    link = Link()
    worker = linked(link)
    assert not worker.cancelled
    link.is_cancelled = True
    assert worker.cancelled
    assert worker.cancelled() is True


def test_check_cancelled_raises_job_cancelled() -> None:
    """check_cancelled does nothing while the job runs, and raises JobCancelled once cancelled."""
    link = Link()
    worker = linked(link)
    worker.job_id = 7
    worker.check_cancelled()
    link.is_cancelled = True
    with pytest.raises(JobCancelled, match="Job 7 was cancelled"):
        worker.check_cancelled()


def test_cancelled_compares_as_a_bool() -> None:
    """Worker.cancelled is equal to, hashes and prints as the bool it reads as."""
    flag = workers.Echo().cancelled
    assert flag == False  # noqa: E712 (the comparison is what is tested)
    assert flag != True  # noqa: E712
    assert hash(flag) == hash(False)
    assert repr(flag) == "False"
    assert flag() is False
    by_flag: dict[object, str] = {flag: "x"}
    assert by_flag[False] == "x"


def test_callable_bool_compares_with_its_own_kind_and_ints_only() -> None:
    """CallableBools compare by value; with a str the comparison is not equal."""
    assert CallableBool(True) == CallableBool(1)  # type: ignore[arg-type]
    assert CallableBool(True) != CallableBool(False)
    assert CallableBool(True) == 1
    assert CallableBool(False) != "False"


def test_execute_must_be_implemented() -> None:
    """A Worker subclass without execute raises NotImplementedError naming the class."""

    class Lazy(Worker):
        pass

    with pytest.raises(NotImplementedError, match="Lazy must implement execute"):
        Lazy().execute()


# Retention and time limits -------------------------------------------------------------


@pytest.mark.parametrize(
    ("limit", "seconds"),
    [(None, None), (5, 5.0), (0.5, 0.5), (timedelta(minutes=2), 120.0)],
)
def test_seconds_of(limit: Any, seconds: float | None) -> None:
    """Seconds, a timedelta or None become float seconds or None."""
    assert seconds_of(limit, "limit") == seconds


@pytest.mark.parametrize("limit", [0, -1, float("nan"), float("inf"), True, "5", timedelta(0)])
def test_seconds_of_refuses_what_is_no_positive_duration(limit: Any) -> None:
    """Anything but a positive finite duration is a ValueError naming where it was given."""
    with pytest.raises(ValueError, match=r"Where\.limit is"):
        seconds_of(limit, "Where.limit")


def test_a_bad_retention_is_refused_when_the_class_is_defined() -> None:
    """A retention that is no duration fails at class definition, naming the attribute."""
    with pytest.raises(ValueError, match=r"Kept\.retention is -1"):

        class Kept(Worker):
            retention = -1

    with pytest.raises(ValueError, match="failed_retention"):

        class KeptFailed(Worker):
            failed_retention = timedelta(seconds=-5)
