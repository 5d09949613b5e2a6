"""The example app works as the README says, on the embedded default."""

from __future__ import annotations

import json
import time
from pathlib import Path

from example.app import PrimeReport, create_app
from tests.conftest import Internals, json_of, poll


def test_prime_report_worker_is_right() -> None:
    """The example's worker computes a correct report."""
    status, body = PrimeReport().execute(100)
    report = json.loads(body)
    assert status == "ok"
    assert (report["primes"], report["largest"], report["twin_prime_pairs"]) == (25, 97, 8)
    # Across segment boundaries too: pi(3e6) and the twin pairs below 3e6.
    report = json.loads(PrimeReport().execute(3_000_000)[1])
    assert (report["primes"], report["twin_prime_pairs"]) == (216816, 20932)


def test_post_then_poll(tmp_path: Path, internals: Internals) -> None:
    """POST /primes answers 202 with token, url and Location; polls show progress, then 200."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/example.db"})
    try:
        client = app.test_client()
        created = client.post("/primes", json={"limit": 60_000_000})
        assert created.status_code == 202
        assert json_of(created)["url"].startswith("http://localhost/async_request/job/")
        assert created.headers["Location"] == json_of(created)["url"]
        token = json_of(created)["token"]
        messages = set()
        deadline = time.monotonic() + 60
        while (response := poll(client, token)).status_code == 202:
            assert time.monotonic() < deadline
            if response.json["message"]:
                messages.add(response.json["message"])
            time.sleep(0.05)
        assert response.status_code == 200
        report = json.loads(response.json["response"]["body"])
        assert report["primes"] == 3562115
        assert any(m.startswith("sieved ") for m in messages)
    finally:
        internals.embedded_worker(app).stop()


def test_bad_limit_is_a_400(tmp_path: Path) -> None:
    """The example validates its input before enqueueing."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/example.db"})
    assert app.test_client().post("/primes", json={"limit": "lots"}).status_code == 400


def test_page_loads_the_client(tmp_path: Path) -> None:
    """The page is served and links the packaged browser client, which is served too."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/example.db"})
    client = app.test_client()
    page = client.get("/").get_data(as_text=True)
    assert '<progress id="bar"' in page
    assert "/async_request/static/async-request.js" in page
    script = client.get("/async_request/static/async-request.js")
    assert script.status_code == 200
    assert "root.AsyncRequest = {start: start, Job: Job};" in script.get_data(as_text=True)
