"""Worker classes the tests enqueue; module level, so worker processes can import them."""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from flask import current_app
from flask_sqlalchemy import SQLAlchemy

from flask_async_request import TimeLimitExceeded, Worker

#: Files that record each run, for tests that count executions across processes.
EFFECTS_DIR_ENV = "FAR_TEST_EFFECTS_DIR"


def _db() -> SQLAlchemy:
    """The Flask-SQLAlchemy extension of the app the job runs in."""
    db: SQLAlchemy = current_app.extensions["sqlalchemy"]
    return db


class Echo(Worker):
    """Returns its arguments as the JSON body."""

    def execute(self, *args: Any, **kwargs: Any) -> tuple[int, str]:
        return 200, json.dumps({"args": list(args), "kwargs": kwargs, "job_id": self.job_id})


class Reply(Worker):
    """Returns exactly the status and body it is given."""

    def execute(self, status: Any, body: Any) -> Any:
        return status, body


class ReplyHTTPStatus(Worker):
    """Returns an http.HTTPStatus member."""

    def execute(self) -> tuple[HTTPStatus, str]:
        return HTTPStatus.CREATED, "made"


class ReturnValue(Worker):
    """Returns its argument as the whole reply, whatever it is."""

    def execute(self, value: Any) -> Any:
        return value


class ReturnBytes(Worker):
    """Returns a bytes body."""

    # Any: the body is deliberately outside what Worker.execute's type allows.
    def execute(self) -> Any:
        return 200, b"raw"


class Boom(Worker):
    """Always raises."""

    def execute(self, message: str = "boom") -> tuple[int, str]:
        raise RuntimeError(message)


class FlakyThenOk(Worker):
    """Raises until it has run ``failures + 1`` times (counted in a file), then succeeds."""

    def execute(self, counter_file: str, failures: int) -> tuple[int, str]:
        path = Path(counter_file)
        runs = int(path.read_text()) + 1 if path.exists() else 1
        path.write_text(str(runs))
        if runs <= failures:
            raise ConnectionError(f"transient failure {runs}")
        return 200, str(runs)


class Sleep(Worker):
    """Sleeps, then answers; records each run in the effects directory."""

    def execute(self, seconds: float, tag: str = "") -> tuple[int, str]:
        time.sleep(seconds)
        effects = os.environ.get(EFFECTS_DIR_ENV)
        if effects:
            with open(Path(effects) / f"{self.job_id}-{os.getpid()}-{time.monotonic_ns()}", "w"):
                pass
        return 200, json.dumps({"slept": seconds, "tag": tag, "pid": os.getpid()})


class NotAWorker:
    """A class with execute() that is not a Worker subclass."""

    def execute(self) -> tuple[int, str]:
        return 200, "should never run"


class ReportOwnStatus(Worker):
    """Answers with the status its own job row has while execute runs."""

    def execute(self) -> tuple[int, str]:
        from flask_async_request import Job

        job = _db().session.get(Job, self.job_id)
        assert job is not None
        return 200, job.status.value


class Picky(Worker):
    """Retries only ConnectionError; raises whatever it is told to."""

    retry_on = (ConnectionError,)

    def execute(self, counter_file: str, error: str) -> tuple[int, str]:
        path = Path(counter_file)
        path.write_text(str(int(path.read_text()) + 1 if path.exists() else 1))
        raise {"connection": ConnectionError, "value": ValueError}[error](error)


class Hijacked(Worker):
    """Simulates a sweeper taking the job over mid-run: another attempt claims the row."""

    def execute(self) -> tuple[int, str]:
        import sqlalchemy as sa

        with _db().engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE async_request_jobs SET attempts = attempts + 1 WHERE id = :id"),
                {"id": self.job_id},
            )
        return 200, "stale reply"


class LeaseProbe(Worker):
    """Reads its own lease before and after sleeping, from another connection."""

    def execute(self, seconds: float) -> tuple[int, str]:
        import sqlalchemy as sa

        engine = _db().engine

        def lease() -> str:
            with engine.connect() as conn:
                return str(
                    conn.execute(
                        sa.text("SELECT lease_expires_at FROM async_request_jobs WHERE id = :id"),
                        {"id": self.job_id},
                    ).scalar()
                )

        before = lease()
        time.sleep(seconds)
        return 200, json.dumps({"before": before, "after": lease()})


class ProgressProbe(Worker):
    """Reports progress once, then reads its own row back from another connection."""

    def execute(self) -> tuple[int, str]:
        import sqlalchemy as sa

        self.progress(3, 4, "three quarters")
        with _db().engine.connect() as conn:
            row = conn.execute(
                sa.text("SELECT progress, progress_message FROM async_request_jobs WHERE id = :id"),
                {"id": self.job_id},
            ).one()
        return 200, json.dumps({"progress": row[0], "message": row[1]})


class TightLoop(Worker):
    """Reports progress many times as fast as it can."""

    def execute(self, steps: int) -> tuple[int, str]:
        for step in range(steps):
            self.progress(step, steps)
        return 200, str(steps)


class CancelsItself(Worker):
    """Cancels its own job mid-run (as a client's DELETE would), then keeps reporting."""

    def execute(self, counter_file: str) -> tuple[int, str]:
        from flask_async_request.web import cancel_job

        assert self.job_id is not None
        cancel_job(self.job_id)
        assert self.cancelled
        for step in range(10):
            Path(counter_file).write_text(str(step))
            self.progress(step, 10)
            time.sleep(0.25)
        return 200, "should not be stored"


class CallsCancelled(Worker):
    """Cancels its own job, then calls ``self.cancelled()`` like its sibling methods."""

    def execute(self, answers_file: str) -> tuple[int, str]:
        from flask_async_request.web import cancel_job

        assert self.job_id is not None
        cancel_job(self.job_id)
        answers = [self.cancelled(), bool(self.cancelled)]
        Path(answers_file).write_text(json.dumps(answers))
        return 200, "should not be stored"


class SlowSteps(Worker):
    """Works in steps, reporting progress; stops when cancelled."""

    def execute(self, steps: int, pause: float) -> tuple[int, str]:
        for step in range(steps):
            self.progress(step, steps, f"step {step + 1} of {steps}")
            time.sleep(pause)
            effects = os.environ.get(EFFECTS_DIR_ENV)
            if effects:
                (Path(effects) / f"{self.job_id}-step-{step}").touch()
        return 200, json.dumps({"steps": steps})


class WriteEffect(Worker):
    """A transactional worker: inserts a row into ``effects`` through the app's session.

    ``take_over`` first lets "another worker" take the job over (its attempt is
    bumped on another connection), as the sweeper and a second claim would.
    Each write leaves a file ``written-<job id>`` in the effects directory; the
    first one then holds its uncommitted write for ``sleep`` seconds.
    """

    transactional = True

    def execute(self, take_over: bool = False, fail: bool = False, sleep: float = 0.0) -> Any:
        if take_over:
            with _db().engine.begin() as conn:
                conn.execute(
                    sa.text("UPDATE async_request_jobs SET attempts = attempts + 1 WHERE id = :id"),
                    {"id": self.job_id},
                )
        _db().session.execute(
            sa.text("INSERT INTO effects (job_id) VALUES (:id)"), {"id": self.job_id}
        )
        effects = os.environ.get(EFFECTS_DIR_ENV)
        marker = Path(effects or ".") / f"written-{self.job_id}"
        first = not (effects and marker.exists())
        if effects:
            marker.touch()
        if first:
            time.sleep(sleep)
        if fail:
            raise RuntimeError("failed after writing")
        return 200, "written"


class Forever(Worker):
    """Never returns by itself; its time limit stops it. Leaves ``cleaned-<id>`` when stopped."""

    time_limit = 1.5

    def execute(self) -> Any:
        try:
            while True:
                time.sleep(0.01)
        except TimeLimitExceeded:
            effects = os.environ.get(EFFECTS_DIR_ENV)
            if effects:
                (Path(effects) / f"cleaned-{self.job_id}").touch()
            raise


class BlockedForever(Worker):
    """Blocks in one long C call, where no exception reaches it: only its process can go."""

    time_limit = 2

    def execute(self) -> Any:
        time.sleep(3600)
        return 200, "never"


#: Queues of their own, for the tests of per-worker queues.
REPORTS_QUEUE = "far-test-reports"
THUMBS_QUEUE = "far-test-thumbs"


class Report(Worker):
    """Runs on the reports queue; answers which worker process ran it."""

    queue = REPORTS_QUEUE

    def execute(self) -> tuple[int, str]:
        return 200, json.dumps({"tag": os.environ.get("FAR_TEST_WORKER_TAG"), "pid": os.getpid()})


class Thumbnail(Worker):
    """Runs on the thumbnails queue; answers which worker process ran it."""

    queue = THUMBS_QUEUE

    def execute(self) -> tuple[int, str]:
        return 200, json.dumps({"tag": os.environ.get("FAR_TEST_WORKER_TAG"), "pid": os.getpid()})


class KeptBriefly(Worker):
    """Its finished jobs, failed ones too, are kept ten minutes."""

    retention = timedelta(minutes=10)

    def execute(self) -> tuple[int, str]:
        return 200, "brief"


class KeptFailures(Worker):
    """Its failed jobs are kept a week for inspection; the others as configured."""

    failed_retention = 7 * 24 * 3600

    def execute(self) -> tuple[int, str]:
        return 200, "kept"


#: The values :class:`Hostile` hands the library, by key: kept out of the job's
#: arguments, which cannot hold all of them. Eager Celery runs it in the test's process.
HOSTILE_VALUES: dict[str, Any] = {}


class Hostile(Worker):
    """Hands the library a value of :data:`HOSTILE_VALUES` as the ``field`` of its run."""

    def execute(self, field: str, key: str) -> Any:
        value = HOSTILE_VALUES.pop(key)
        if field == "body":
            return 200, value
        if field == "status":
            return value, "x"
        if field == "content_type":
            return 200, "x", value
        if field == "progress":
            self.progress(0.5, message=value)
            return 200, "reported"
        if field == "error":
            raise RuntimeError(value)
        raise AssertionError(f"unknown field {field!r}")


class RaisesDatabaseError(Worker):
    """Runs a query the database refuses, and lets SQLAlchemy's error out."""

    retry_on = ()

    def execute(self) -> tuple[int, str]:
        _db().session.execute(sa.text("SELECT * FROM no_such_table WHERE id = :id"), {"id": 7})
        return 200, "unreachable"


class RefusedWrite(Worker):
    """A transactional worker whose own write breaks a constraint when the reply is committed."""

    transactional = True
    retry_on = ()

    def execute(self) -> tuple[int, str]:
        from flask_async_request import Job

        session = _db().session
        own = session.get(Job, self.job_id)
        assert own is not None
        session.add(Job(uid=own.uid, worker=own.worker, params={"args": [], "kwargs": {}}))
        return 200, "written"


class LongQueue(Worker):
    """Names a queue longer than the jobs table holds."""

    queue = "q" * 256

    def execute(self) -> tuple[int, str]:
        return 200, "unreachable"


class ChecksCancelled(Worker):
    """Asks whether its job was cancelled, once, and answers."""

    def execute(self) -> tuple[int, str]:
        return 200, str(self.cancelled)


#: Every byte value, so a round trip shows no byte is changed on the way.
ALL_BYTES = bytes(range(256)) * 5


class ReturnFile(Worker):
    """Returns the file at ``path`` as a ``pathlib.Path``, with the headers given."""

    def execute(self, path: str, headers: dict[str, str] | None = None) -> Any:
        return 200, Path(path), None, headers or {}


class ReturnFileObject(Worker):
    """Returns an open binary file object of ``data``'s latin-1 bytes."""

    def execute(self, data: str) -> Any:
        import io

        return 201, io.BytesIO(data.encode("latin-1")), "application/x-test"


class ReturnChunks(Worker):
    """Returns ``count`` chunks of ``size`` bytes, each of its index's byte, as a generator.

    With ``fail_after``, raises after that many chunks: a run that dies mid-write.
    """

    def execute(self, count: int, size: int, fail_after: int | None = None) -> Any:
        def chunks() -> Any:
            for index in range(count):
                if fail_after is not None and index == fail_after:
                    raise OSError("the disk went away")
                yield bytes([index % 256]) * size

        return 200, chunks(), "application/octet-stream", [("Link", '<https://a.test/>; rel="x"')]


class ReturnResponse(Worker):
    """Returns a Werkzeug response with a streamed body and headers kept and not kept."""

    def execute(self) -> Any:
        from werkzeug.wrappers import Response

        response = Response(
            (part.encode() for part in ("made ", "of ", "parts")), 201, mimetype="text/csv"
        )
        response.headers["Content-Disposition"] = 'attachment; filename="parts.csv"'
        response.headers["Set-Cookie"] = "session=secret"
        response.headers["X-Internal"] = "not for the client"
        return response


class ReturnText(Worker):
    """Returns ``count`` times ``text`` as a text body, with an optional header."""

    def execute(self, text: str, count: int, disposition: str | None = None) -> Any:
        if disposition is None:
            return 200, text * count, "text/plain; charset=utf-8"
        return 200, text * count, "text/plain; charset=utf-8", {"Content-Disposition": disposition}


class TransactionalBytes(Worker):
    """A transactional worker returning bytes: its chunks go in its own transaction."""

    transactional = True

    def execute(self) -> Any:
        return 200, (bytes([i]) * 1000 for i in range(3)), "application/octet-stream"


class CancelsThenReturnsBytes(Worker):
    """Cancels its own job, then returns bytes: written whole, then not its job's result."""

    def execute(self) -> Any:
        from flask_async_request.web import cancel_job

        assert self.job_id is not None
        cancel_job(self.job_id)
        return 200, b"written after the cancel"


class Steps(Worker):
    """Reports each of ``steps`` steps, ``pause`` seconds apart, with a message."""

    def execute(self, steps: int, pause: float) -> tuple[int, str]:
        for step in range(1, steps + 1):
            time.sleep(pause)
            self.progress(step, steps, f"step {step}")
        return 200, json.dumps({"steps": steps})
