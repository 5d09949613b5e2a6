"""The example app works as the README says, on the embedded default."""

from __future__ import annotations

import json
import time
from pathlib import Path

from example.app import PrimeReport, create_app
from tests.conftest import poll


def test_prime_report_worker_is_right() -> None:
    """The example's worker computes a correct report."""
    status, body = PrimeReport().execute(100)
    report = json.loads(body)
    assert status == "ok"
    assert (report["primes"], report["largest"], report["twin_prime_pairs"]) == (25, 97, 8)


def test_post_then_poll(tmp_path: Path) -> None:
    """POST /primes answers 202 with token and url; polling gives 202, then 200 with the report."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/example.db"})
    try:
        client = app.test_client()
        created = client.post("/primes", json={"limit": 3_000_000})
        assert created.status_code == 202
        assert created.json["url"] == "http://localhost/async_request/job"
        token = created.json["token"]
        assert poll(client, token).status_code == 202
        deadline = time.monotonic() + 30
        while (response := poll(client, token)).status_code == 202:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert response.status_code == 200
        report = json.loads(response.json["response"]["body"])
        assert report["primes"] == 216816
    finally:
        app.extensions["async_request"].embedded.stop()


def test_bad_limit_is_a_400(tmp_path: Path) -> None:
    """The example validates its input before enqueueing."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/example.db"})
    assert app.test_client().post("/primes", json={"limit": "lots"}).status_code == 400
