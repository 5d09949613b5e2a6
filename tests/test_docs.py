"""The tutorial's app works as the tutorial says, on the embedded default."""

from __future__ import annotations

import importlib
import json
import re
import shutil
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from flask import Flask

from flask_async_request.client import wait_for
from tests.conftest import Internals, json_of, poll, serving

APP_FILE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "sums.py"


def sum_of_squares(n: int) -> int:
    """The sum of i * i for i below n, by its closed form."""
    return (n - 1) * n * (2 * n - 1) // 6


@pytest.fixture
def sums(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The tutorial's app file saved as sums.py, as the tutorial says, and imported."""
    shutil.copy(APP_FILE, tmp_path / "sums.py")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        yield importlib.import_module("sums")
    finally:
        sys.modules.pop("sums", None)


@pytest.fixture
def app(sums: ModuleType, tmp_path: Path, internals: Internals) -> Iterator[Flask]:
    app: Flask = sums.create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/sums.db"})
    try:
        yield app
    finally:
        internals.embedded_worker(app).stop()


def start(client: Any, n: object) -> Any:
    return client.post("/sums", json={"n": n})


def test_sum_runs_with_progress(app: Flask) -> None:
    """POST /sums answers 202; polls show the worker's progress, then the sum."""
    client = app.test_client()
    n = 8_000_000
    created = start(client, n)
    assert created.status_code == 202
    assert created.headers["Location"] == created.json["url"]
    messages = set()
    deadline = time.monotonic() + 60
    while (response := poll(client, created.json["token"])).status_code == 202:
        assert time.monotonic() < deadline
        if response.json["message"]:
            messages.add(response.json["message"])
        time.sleep(0.02)
    assert json.loads(response.json["response"]["body"]) == {"n": n, "sum": sum_of_squares(n)}
    assert all(m.startswith("added ") and m.endswith(f" of {n:,}") for m in messages)


@pytest.mark.parametrize("n", ["lots", 0, True, 10**10])
def test_bad_n_is_a_400(app: Flask, n: object) -> None:
    """The view checks its input before enqueueing anything."""
    response = start(app.test_client(), n)
    assert response.status_code == 400
    assert response.json["errors"][0]["message"].startswith("n must be an int")


def test_cancel_stops_the_worker(app: Flask) -> None:
    """DELETE on the status url cancels a running sum: 499, and every poll after says so."""
    client = app.test_client()
    token = start(client, 1_000_000_000).json["token"]
    deadline = time.monotonic() + 60
    while poll(client, token).json["status"] != "processing":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    headers = {"X-JOB-AUTHORIZATION": f"Bearer {token}"}
    cancelled = client.delete("/async_request/job", headers=headers)
    assert cancelled.status_code == 200
    assert json_of(cancelled)["status"] == "cancelled"
    assert json_of(cancelled)["response"]["status_code"] == 499
    assert poll(client, token).json == cancelled.json


def test_wait_for_gets_the_sum(app: Flask) -> None:
    """The Python client waits for a sum started over HTTP and gets its reply."""
    with serving(app) as base:
        n = 5_000_000
        request = urllib.request.Request(
            f"{base}/sums",
            data=json.dumps({"n": n}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request) as response:
            started = json.loads(response.read())
        result = wait_for(url=started["url"], token=started["token"], long_poll=1, timeout=60)
        assert result.ok
        assert json.loads(result.body)["sum"] == sum_of_squares(n)


@pytest.mark.parametrize("name", ["index.rst", "tutorial.rst", "clients.rst"])
def test_the_docs_show_a_jobs_url_with_its_token(name: str) -> None:
    """A 202's url and Location in the docs are the job's own url, as accepted() gives them."""
    text = (APP_FILE.parents[1] / name).read_text(encoding="utf-8")
    shown = re.findall(r'(?:"url": ?"|Location: )(http[^"\s]*)', text)
    assert shown, f"{name} shows no job url"
    assert all("/async_request/job/eyJ" in url for url in shown), shown
