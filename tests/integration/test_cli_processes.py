"""`flask async-request worker` and `beat` as real processes: the periodic purge runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from flask_async_request import Job, JobStatus
from flask_async_request.values import utcnow
from tests.conftest import add_job, current_db
from tests.integration.conftest import ROOT, _environment, _load_project

pytestmark = pytest.mark.integration


def _spawn(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "flask", "--app", "tests.integration.project:app",
        "async-request", *args,
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def test_beat_and_worker_purge_old_finished_jobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With a 1 s schedule, jobs past their retention go; pending, recent and kept ones stay."""
    env = _environment(tmp_path, os.environ.get("FAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    env["FAR_TEST_CLEAN_EVERY"] = "1"
    monkeypatch.setenv("FAR_TEST_CLEAN_EVERY", "1")
    project = _load_project(env, monkeypatch)
    old, recent = utcnow() - timedelta(days=3), utcnow() - timedelta(minutes=1)
    with project.app.app_context():
        project.db.drop_all()
        project.db.create_all()
        for _ in range(3):
            add_job(status=JobStatus.PROCESSED, finished_at=old, response="old")
        add_job(status=JobStatus.FAILED, finished_at=old, response="old")
        add_job(status=JobStatus.PROCESSED, finished_at=recent, response="recent")
        # Past their worker class's ten minutes, though younger than the global day.
        brief = utcnow() - timedelta(hours=2)
        add_job("tests.workers:KeptBriefly", JobStatus.PROCESSED, finished_at=brief, response="old")
        # Kept a week by its class's failed_retention.
        add_job("tests.workers:KeptFailures", JobStatus.FAILED, finished_at=old, response="kept")
        waiting = add_job(status=JobStatus.WAITING, response="waiting")
        waiting.created_at = old
        add_job(status=JobStatus.PROCESSING, response="processing")
        current_db().session.commit()

    worker = _spawn(env, tmp_path / "worker.log", "worker", "--concurrency", "1", "-l", "INFO")
    beat = _spawn(
        env, tmp_path / "beat.log", "beat", "-l", "INFO", "--schedule", str(tmp_path / "schedule")
    )
    try:
        deadline = time.monotonic() + 60
        remaining: list[str] = []
        while time.monotonic() < deadline:
            with project.app.app_context():
                remaining = sorted(j.response or "" for j in current_db().session.query(Job))
            if "old" not in remaining:
                break
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()
            assert beat.poll() is None, (tmp_path / "beat.log").read_text()
            time.sleep(0.5)
        assert remaining == ["kept", "processing", "recent", "waiting"], (
            tmp_path / "beat.log"
        ).read_text() + (tmp_path / "worker.log").read_text()
    finally:
        _stop(beat)
        _stop(worker)
    assert "flask_async_request.purge_jobs" in (tmp_path / "beat.log").read_text()
