"""Chaos: 500 jobs while the worker is SIGKILLed and Redis restarts; every job still ends."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from flask_async_request import EnqueueError, Job, JobStatus
from tests import workers
from tests.conftest import current_db
from tests.integration.conftest import ROOT, _environment, _load_project, effects

pytestmark = pytest.mark.integration

JOBS = 500
REDIS_PORT = 6379


def _redis_up() -> bool:
    return (
        subprocess.run(
            ["redis-cli", "-p", str(REDIS_PORT), "ping"], capture_output=True
        ).stdout.strip()
        == b"PONG"
    )


def _restart_redis() -> None:
    subprocess.run(["redis-cli", "-p", str(REDIS_PORT), "shutdown", "nosave"], capture_output=True)
    deadline = time.monotonic() + 10
    while _redis_up() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # Down for a moment: publishing and consuming fail meanwhile.
    subprocess.run(
        ["redis-server", "--daemonize", "yes", "--bind", "127.0.0.1", "--port", str(REDIS_PORT),
         "--save", "", "--appendonly", "no"],
        check=True, capture_output=True,
    )  # fmt: skip
    deadline = time.monotonic() + 20
    while not _redis_up():
        assert time.monotonic() < deadline, "Redis did not come back"
        time.sleep(0.1)


def _start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celery", "-A", "tests.integration.project:celery_app", *args]
    with log.open("ab") as out:
        return subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _worker(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return _start(
        env, log, "worker", "--pool", "prefork", "--concurrency", "2", "--queues",
        env["FAR_TEST_QUEUE"], "--loglevel", "INFO", "--without-mingle", "--without-gossip",
        "--hostname", f"chaos-{uuid.uuid4().hex[:6]}@%h",
    )  # fmt: skip


class _Supervisor:
    """Keeps one Celery process running, as a process manager does in production.

    As systemd's ``Restart=always`` or a Kubernetes Deployment would. Celery's
    worker can exit by itself when the broker goes away under it: kombu, closing
    the lost connection, may fail with an ``AttributeError`` that the worker
    reports as an unrecoverable error. Jobs must then end once the worker is
    back, as they do after a SIGKILL.
    """

    def __init__(self, start: Callable[[], subprocess.Popen[bytes]], log: Path) -> None:
        self.start, self.log, self.exits = start, log, 0
        self.proc = start()

    def kill(self) -> None:
        """SIGKILL the process, parent and children at once, and start another."""
        _kill_group(self.proc, signal.SIGKILL)
        self.proc = self.start()

    def watch(self) -> None:
        """Start the process again if it exited by itself (its children killed first)."""
        if self.proc.poll() is not None:
            self.exits += 1
            _kill_group(self.proc, signal.SIGKILL)
            self.proc = self.start()

    def stop(self) -> None:
        """Stop the process and its children as a warm shutdown does."""
        _kill_group(self.proc, signal.SIGTERM)

    def report(self) -> str:
        """The process's log, less the lines of each task received and done."""
        lines = self.log.read_text(errors="replace").splitlines()
        noisy = ("] received", "succeeded in", "is not waiting", "Sending due task")
        kept = [line for line in lines if not any(word in line for word in noisy)]
        return f"{self.log.name}: exited by itself {self.exits} times\n" + "\n".join(kept)[-5000:]


def _kill_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _counts(app: object) -> Counter[JobStatus]:
    with app.app_context():  # type: ignore[attr-defined]
        session = current_db().session
        rows = session.query(Job.status).all()
        session.commit()
    return Counter(status for (status,) in rows)


def test_jobs_survive_a_killed_worker_and_a_redis_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every job ends processed or failed; none ran its effect twice without a retry."""
    env = _environment(tmp_path, os.environ.get("FAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    env.update(FAR_TEST_LEASE="3", FAR_TEST_WAITING_TIMEOUT="4", FAR_TEST_SWEEP_EVERY="1")
    env.update(FAR_TEST_RETRY="2")
    for key in ("FAR_TEST_LEASE", "FAR_TEST_WAITING_TIMEOUT", "FAR_TEST_SWEEP_EVERY"):
        monkeypatch.setenv(key, env[key])
    monkeypatch.setenv("FAR_TEST_RETRY", "2")
    project = _load_project(env, monkeypatch)
    with project.app.app_context():
        project.db.drop_all()
        project.db.create_all()

    worker_log, beat_log = tmp_path / "worker.log", tmp_path / "beat.log"
    beat = _Supervisor(
        lambda: _start(
            env, beat_log, "beat", "--schedule", str(tmp_path / "schedule"), "-l", "INFO"
        ),
        beat_log,
    )
    worker = _Supervisor(lambda: _worker(env, worker_log), worker_log)
    try:
        with project.app.app_context():
            for i in range(JOBS):
                # On EnqueueError the job is stored all the same; the sweeper sends it.
                with contextlib.suppress(EnqueueError):
                    Job.create_and_enqueue(workers.Sleep, 0.05, tag=str(i))

        # Kill the worker (parent and children at once) while it runs jobs.
        deadline = time.monotonic() + 120
        while True:
            counts = _counts(project.app)
            if counts[JobStatus.PROCESSED] >= 60 and counts[JobStatus.PROCESSING] > 0:
                break
            assert time.monotonic() < deadline, worker.report()
            time.sleep(0.02)
        worker.kill()

        # Restart Redis, losing every message it held.
        while _counts(project.app)[JobStatus.PROCESSED] < 200:
            assert time.monotonic() < deadline, worker.report()
            time.sleep(0.1)
        _restart_redis()

        # From here on a process that exits by itself is started again.
        deadline = time.monotonic() + 180
        while True:
            counts = _counts(project.app)
            if counts[JobStatus.WAITING] + counts[JobStatus.PROCESSING] == 0:
                break
            assert time.monotonic() < deadline, f"{counts}\n{worker.report()}\n{beat.report()}"
            worker.watch()
            beat.watch()
            time.sleep(0.5)
    finally:
        worker.stop()
        beat.stop()

    # The restart of Redis may have made each exit once, not more.
    assert worker.exits <= 1, worker.report()
    assert beat.exits <= 1, beat.report()
    with project.app.app_context():
        jobs = current_db().session.query(Job).all()
        assert len(jobs) == JOBS
        assert {job.status for job in jobs} <= {JobStatus.PROCESSED, JobStatus.FAILED}
        runs = Counter(int(name.split("-")[0]) for name in effects(tmp_path))
        for job in jobs:
            if job.status is JobStatus.PROCESSED:
                assert runs[job.id] >= 1, f"job {job.id} processed without running"
            # An effect can repeat only if an earlier attempt was lost after it.
            assert runs[job.id] <= 1 or job.attempts > 1, f"job {job.id} ran {runs[job.id]} times"
            assert runs[job.id] <= job.attempts
        retried = sum(1 for job in jobs if job.attempts > 1)
        print(
            f"chaos: {Counter(j.status for j in jobs)}; {retried} jobs ran more than once;"
            f" the worker exited by itself {worker.exits} times, beat {beat.exits} times"
        )
