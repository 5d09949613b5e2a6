"""Real services: PostgreSQL for jobs, Redis or RabbitMQ as broker, a `celery worker` process."""

from __future__ import annotations

import importlib
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.integration


class WorkerProcess:
    """A `celery worker` subprocess and its log."""

    def __init__(self, proc: subprocess.Popen[bytes], log: Path) -> None:
        self.proc = proc
        self.log = log

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _environment(tmp_path: Path, broker_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        FAR_TEST_BROKER_URL=broker_url,
        FAR_TEST_QUEUE=f"far-test-{uuid.uuid4().hex[:12]}",
        FAR_TEST_EFFECTS_DIR=str(tmp_path / "effects"),
        FAR_TEST_SIGNALS_DIR=str(tmp_path / "signals"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
    )
    (tmp_path / "effects").mkdir(exist_ok=True)
    (tmp_path / "signals").mkdir(exist_ok=True)
    return env


def _load_project(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Import the project module fresh with this test's settings."""
    for key in ("FAR_TEST_BROKER_URL", "FAR_TEST_QUEUE", "FAR_TEST_EFFECTS_DIR"):
        monkeypatch.setenv(key, env[key])
    sys.modules.pop("tests.integration.project", None)
    return importlib.import_module("tests.integration.project")


def _start_worker(env: dict[str, str], log: Path, concurrency: int) -> WorkerProcess:
    command = [
        sys.executable, "-m", "celery",
        "-A", "tests.integration.project:celery_app",
        "worker",
        "--pool", "prefork",
        "--concurrency", str(concurrency),
        "--queues", env["FAR_TEST_QUEUE"],
        "--loglevel", "INFO",
        "--without-mingle", "--without-gossip",
        "--hostname", f"far-test-{uuid.uuid4().hex[:6]}@%h",
    ]  # fmt: skip
    out = log.open("wb")
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    worker = WorkerProcess(proc, log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if "ready." in worker.output():
            return worker
        if proc.poll() is not None:
            raise RuntimeError(f"celery worker exited early:\n{worker.output()}")
        time.sleep(0.2)
    worker.stop()
    raise RuntimeError(f"celery worker not ready after 60 s:\n{worker.output()}")


Stack = Callable[..., tuple[Flask, WorkerProcess]]


@pytest.fixture
def stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Stack]:
    """Start the app on PostgreSQL and a real worker on the given broker (Redis by default)."""
    started: list[WorkerProcess] = []

    def start(broker: str = "redis", concurrency: int = 2) -> tuple[Flask, WorkerProcess]:
        urls = {
            "redis": os.environ.get("FAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"),
            "amqp": os.environ.get("FAR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//"),
        }
        env = _environment(tmp_path, urls[broker])
        project = _load_project(env, monkeypatch)
        with project.app.app_context():
            project.db.drop_all()
            project.db.create_all()
        worker = _start_worker(env, tmp_path / f"worker-{len(started)}.log", concurrency)
        started.append(worker)
        return project.app, worker

    yield start
    for worker in started:
        worker.stop()


def effects(tmp_path: Path) -> list[str]:
    """The records the Sleep worker left, one file per run."""
    return sorted(p.name for p in (tmp_path / "effects").iterdir())


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, log: Path, timeout: float = 30) -> None:
    """Wait until a server listens on ``port``; fail with its log if it does not."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
