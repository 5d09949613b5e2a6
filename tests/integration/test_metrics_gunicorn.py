"""Metrics under two gunicorn workers: the scrape adds up every process's counts."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, free_port, wait_for_port
from tests.test_metrics import _value

pytestmark = pytest.mark.integration


def _request(port: int, method: str, path: str) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_scrape_counts_the_jobs_of_every_worker_process(tmp_path: Path) -> None:
    """Jobs run by two gunicorn processes are all in one scrape (multiprocess mode)."""
    database = tmp_path / "jobs.db"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prometheus"),
        "FAR_TEST_METRICS_DATABASE_URL": f"sqlite:///{database}",
    }
    (tmp_path / "prometheus").mkdir()
    subprocess.run(
        [sys.executable, "-c", "from tests.integration.metrics_app import app, db\n"
         "with app.app_context(): db.create_all()"],
        cwd=ROOT, env=env, check=True,
    )  # fmt: skip
    port = free_port()
    log = tmp_path / "gunicorn.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}",
         "tests.integration.metrics_app:app"],
        cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_for_port(port, log)
        pids = set()
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda _: _request(port, "POST", "/echo"), range(20)))
        assert [status for status, _ in answers] == [202] * 20
        status, body = _request(port, "GET", "/async-request/metrics")
        assert status == 200
        text = body.decode()
        echo = "tests.workers:Echo"
        assert _value(text, "async_request_jobs_created_total", worker=echo) == 20
        assert _value(text, "async_request_jobs_ended_total", status="processed", worker=echo) == 20
        import sqlite3

        with sqlite3.connect(database) as conn:
            for (response,) in conn.execute("SELECT response FROM async_request_jobs"):
                pids.add(json.loads(response)["args"][0])
        # Both processes ran jobs, so the total is the sum of two processes' counts.
        assert len(pids) == 2, pids
    finally:
        server.terminate()
        server.wait(20)
