"""Time limits and queues with real `celery worker` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_async_request import Job
from tests import workers
from tests.integration.conftest import ROOT, Stack, WorkerProcess, _environment, _load_project

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("FAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _long_poll(app: Flask, token: str, seconds: int = 20) -> Any:
    return app.test_client().get(
        "/async_request/job", headers={"X-JOB-AUTHORIZATION": token, "Prefer": f"wait={seconds}"}
    )


def _create(app: Flask, worker: type, *args: Any) -> str:
    with app.app_context():
        return str(Job.create_and_enqueue(worker, *args).token)


def test_prefork_worker_ends_jobs_past_their_limit_and_goes_on(stack: Stack) -> None:
    """A looping job and one blocked in C both fail at their limit; the worker serves on."""
    app, worker = stack(concurrency=2)
    looping = _create(app, workers.Forever)
    blocked = _create(app, workers.BlockedForever)
    started = time.monotonic()
    for token, limit in ((looping, "1.5"), (blocked, "2")):
        answer = _long_poll(app, token)
        assert answer.status_code == 200, answer.json
        assert answer.json["status"] == "failed"
        assert f"exceeded its time limit of {limit} s" in answer.json["response"]["body"]
    assert time.monotonic() - started < 10
    # Both children are free again: the looping one was stopped, the blocked one replaced.
    tokens = [_create(app, workers.Echo, n) for n in range(4)]
    for token in tokens:
        assert _long_poll(app, token).json["status"] == "processed"
    assert worker.proc.poll() is None


def _worker(env: dict[str, str], log: Path, *args: str) -> WorkerProcess:
    """A `celery worker` started as the README shows it, with ``args`` added."""
    command = [
        sys.executable, "-m", "celery", "-A", "tests.integration.project:celery_app", "worker",
        "--pool", "prefork", "--concurrency", "1", "--loglevel", "INFO",
        "--without-mingle", "--without-gossip", "--hostname", f"q-{uuid.uuid4().hex[:6]}@%h",
        *args,
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )
    started = WorkerProcess(proc, log)
    deadline = time.monotonic() + 60
    while "ready." not in started.output():
        assert proc.poll() is None, started.output()
        assert time.monotonic() < deadline, started.output()
        time.sleep(0.2)
    return started


@pytest.fixture
def project(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Any, dict[str, str]]]:
    env = _environment(tmp_path, REDIS_URL)
    loaded = _load_project(env, monkeypatch)
    with loaded.app.app_context():
        loaded.db.drop_all()
        loaded.db.create_all()
    # The worker classes' queues have fixed names: a message an earlier test left
    # there names a job id that the new table gives to another job.
    with loaded.celery_app.connection_for_write() as connection:
        for queue in (workers.REPORTS_QUEUE, workers.THUMBS_QUEUE):
            connection.default_channel.queue_purge(queue)
    yield loaded, env


def test_each_worker_class_is_served_by_its_own_queue(
    project: tuple[Any, dict[str, str]], tmp_path: Path
) -> None:
    """Two workers on two queues: each class runs only on the worker of its queue."""
    loaded, env = project
    started = []
    try:
        for tag, queue in (("reports", workers.REPORTS_QUEUE), ("thumbs", workers.THUMBS_QUEUE)):
            started.append(
                _worker({**env, "FAR_TEST_WORKER_TAG": tag}, tmp_path / f"{tag}.log", "-Q", queue)
            )
        pairs = [(_create(loaded.app, workers.Report), "reports") for _ in range(3)]
        pairs += [(_create(loaded.app, workers.Thumbnail), "thumbs") for _ in range(3)]
        for token, tag in pairs:
            answer = _long_poll(loaded.app, token)
            assert answer.json["status"] == "processed", answer.json
            assert json.loads(answer.json["response"]["body"])["tag"] == tag
    finally:
        for worker in started:
            worker.stop()


def test_worker_started_as_the_readme_shows_serves_the_configured_queue(
    project: tuple[Any, dict[str, str]], tmp_path: Path
) -> None:
    """`celery -A app:celery_app worker` with no -Q runs the jobs of ASYNC_REQUEST_QUEUE."""
    loaded, env = project
    assert loaded.app.config["ASYNC_REQUEST_QUEUE"] == env["FAR_TEST_QUEUE"]
    worker = _worker(env, tmp_path / "plain.log")
    try:
        token = _create(loaded.app, workers.Echo, "plain")
        assert _long_poll(loaded.app, token).json["status"] == "processed"
    finally:
        worker.stop()


def test_stats_says_which_queue_no_worker_consumes(
    project: tuple[Any, dict[str, str]], tmp_path: Path
) -> None:
    """With a worker on the default queue only, stats warns about the thumbnails' queue."""
    loaded, env = project
    worker = _worker(env, tmp_path / "plain.log")
    try:
        with loaded.app.app_context():
            Job.create_and_enqueue(workers.Thumbnail)
        result = loaded.app.test_cli_runner().invoke(args=["async-request", "stats", "--json"])
        data = json.loads(result.output)
        assert data["waiting_by_queue"] == {workers.THUMBS_QUEUE: 1}
        assert data["queues_without_workers"] == [workers.THUMBS_QUEUE]
        warned = loaded.app.test_cli_runner().invoke(args=["async-request", "stats"])
        assert "no running worker consumes it" in warned.output
    finally:
        worker.stop()
