"""Embedded mode under real `flask run` processes: jobs survive a killed server and a reload."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import ROOT, free_port, wait_for_port

pytestmark = pytest.mark.integration

#: ASYNC_REQUEST_RETRY of the app: a job runs at most this many times more.
RETRIES = 1


class DevServer:
    """`flask run` on the embedded default, serving tests/integration/embedded_app.py."""

    def __init__(self, tmp_path: Path) -> None:
        self.dir = tmp_path
        self.port = free_port()
        self.runs = tmp_path / "runs"
        self.runs.mkdir()
        # A copy of its own, so that touching it reloads this server only.
        self.source = tmp_path / "embedded_app.py"
        shutil.copy(ROOT / "tests" / "integration" / "embedded_app.py", self.source)
        self.env = {
            **os.environ,
            "FAR_TEST_RUNS_DIR": str(self.runs),
            "FAR_TEST_DATABASE_URI": f"sqlite:///{tmp_path}/jobs.db",
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(tmp_path), str(ROOT), os.environ.get("PYTHONPATH")])
            ),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, *options: str) -> None:
        self.starts += 1
        log = self.dir / f"server-{self.starts}.log"
        command = [
            sys.executable, "-m", "flask", "--app", "embedded_app:create_app",
            "run", "--port", str(self.port), *options,
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command,
            cwd=self.dir,
            env=self.env,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for_port(self.port, log)

    def kill(self) -> None:
        """SIGKILL the server and every process it started."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def request(self, method: str, path: str, token: str | None = None) -> tuple[int, Any]:
        headers = {} if token is None else {"X-JOB-AUTHORIZATION": f"Bearer {token}"}
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.port}{path}", method=method, headers=headers
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())

    def job(self, job_id: int) -> dict[str, Any]:
        return self.request("GET", f"/jobs/{job_id}")[1]  # type: ignore[no-any-return]

    def runs_of(self, job_id: int) -> int:
        return len(list(self.runs.glob(f"{job_id}-*")))

    def wait_until(self, job_id: int, statuses: set[str], timeout: float = 20) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id))["status"] not in statuses:
            assert time.monotonic() < deadline, f"job {job_id} still {job}"
            time.sleep(0.1)
        return job

    def pid(self, timeout: float = 1) -> int | None:
        """The serving process's id, or ``None`` if it does not answer within ``timeout``."""
        request = f"http://127.0.0.1:{self.port}/pid"
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return int(json.loads(response.read())["pid"])
        except (OSError, urllib.error.URLError, ValueError):
            return None


@pytest.fixture
def server(tmp_path: Path) -> Iterator[DevServer]:
    server = DevServer(tmp_path)
    try:
        yield server
    finally:
        server.kill()


def test_jobs_left_by_a_killed_server_end_when_it_starts_again(server: DevServer) -> None:
    """After a SIGKILL and a new start, every job ends, none runs more than its retries allow."""
    server.start()
    finished = server.request("POST", "/fast")[1]
    server.wait_until(finished["id"], {"processed"})
    reply = server.request("GET", "/async_request/job", finished["token"])
    running = [server.request("POST", "/slow/60")[1] for _ in range(2)]
    for job in running:
        server.wait_until(job["id"], {"processing"})
    # The embedded worker runs two jobs at once: this one waits behind them.
    waiting = server.request("POST", "/fast")[1]
    time.sleep(0.3)
    assert server.job(waiting["id"])["status"] == "waiting"

    server.kill()
    server.start()

    for job in [*running, waiting]:
        server.wait_until(job["id"], {"processed", "failed"}, timeout=30)
    assert server.request("GET", "/async_request/job", finished["token"]) == reply
    runs = {job["id"]: server.runs_of(job["id"]) for job in [finished, *running, waiting]}
    assert runs == {
        finished["id"]: 1,
        running[0]["id"]: 1 + RETRIES,
        running[1]["id"]: 1 + RETRIES,
        waiting["id"]: 1,
    }


def test_a_reload_with_a_job_running_restarts_within_seconds(server: DevServer) -> None:
    """A reload waits for a running job only briefly; the job cut short runs again after it."""
    server.start("--reload", "--no-debugger")
    first = server.pid(timeout=15)
    assert first is not None
    job = server.request("POST", "/slow/60")[1]
    server.wait_until(job["id"], {"processing"})

    started = time.monotonic()
    os.utime(server.source, (time.time() + 1, time.time() + 1))
    while server.pid() in (None, first):
        assert time.monotonic() - started < 12, "the reload waited for the running job"
        time.sleep(0.1)

    ended = server.wait_until(job["id"], {"processed", "failed"}, timeout=20)
    assert ended["status"] == "processed"
    assert server.runs_of(job["id"]) == 1 + RETRIES
