"""Worker classes the tests enqueue; module level, so worker processes can import them."""

from __future__ import annotations

import json
import os
import time
from http import HTTPStatus
from pathlib import Path
from typing import Any

from flask_async_request import Worker

#: Files that record each run, for tests that count executions across processes.
EFFECTS_DIR_ENV = "FAR_TEST_EFFECTS_DIR"


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
    """Returns a bytes body, which is not allowed."""

    def execute(self) -> tuple[int, bytes]:
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
        from flask_async_request.state import get_state

        job = get_state().db.session.get(Job, self.job_id)
        assert job is not None
        return 200, job.status.value
