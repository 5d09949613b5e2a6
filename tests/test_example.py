"""The example app works as the README says, on the embedded default."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
import zipfile
from pathlib import Path

import pytest

from example.app import PrimeReport, create_app, export_filename, write_export
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


def _export(limit: int) -> bytes:
    target = io.BytesIO()
    write_export(limit, target)
    return target.getvalue()


def test_export_is_a_zip_of_csv_files_that_agree_with_the_report() -> None:
    """The export's CSV files hold the primes, twin pairs, gaps and summary the report counts."""
    archive = zipfile.ZipFile(io.BytesIO(_export(3_000_000)))
    assert archive.namelist() == ["primes.csv", "twin_primes.csv", "gaps.csv", "summary.csv"]
    primes = [int(line) for line in archive.read("primes.csv").decode().split()[1:]]
    report = json.loads(PrimeReport().execute(3_000_000)[1])
    assert len(primes) == report["primes"] == 216816
    assert primes[:5] == [2, 3, 5, 7, 11] and primes[-1] == report["largest"]
    twins = archive.read("twin_primes.csv").decode().split()[1:]
    assert len(twins) == report["twin_prime_pairs"]
    gaps = list(csv.reader(io.StringIO(archive.read("gaps.csv").decode())))[1:]
    assert sum(int(count) for _, count in gaps) == len(primes) - 1
    summary = list(csv.DictReader(io.StringIO(archive.read("summary.csv").decode())))
    assert summary == [
        {
            "limit": "3000000",
            "primes": "216816",
            "largest": str(primes[-1]),
            "twin_prime_pairs": str(len(twins)),
        }
    ]


def test_export_of_a_limit_is_always_the_same_bytes() -> None:
    """Two exports of one limit are byte-identical (fixed dates), so their ETag is too."""
    assert _export(1000) == _export(1000)


def test_export_downloads_from_its_result_url(tmp_path: Path, internals: Internals) -> None:
    """POST /exports: the finished envelope names the ZIP; its result url serves those bytes."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/example.db"})
    try:
        client = app.test_client()
        created = client.post("/exports", json={"limit": 200_000})
        assert created.status_code == 202
        token = json_of(created)["token"]
        deadline = time.monotonic() + 60
        while (response := poll(client, token)).status_code == 202:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        reply = json_of(response)["response"]
        expected = _export(200_000)
        assert reply["content_type"] == "application/zip"
        assert reply["size"] == len(expected)
        assert reply["sha256"] == hashlib.sha256(expected).hexdigest()
        assert reply["headers"] == [
            ["Content-Disposition", f'attachment; filename="{export_filename(200_000)}"']
        ]
        download = client.get(reply["href"], headers={"X-JOB-AUTHORIZATION": f"Bearer {token}"})
        assert download.status_code == 200
        assert download.data == expected
        link = client.get(reply["download_href"])
        assert link.data == expected
    finally:
        internals.embedded_worker(app).stop()


@pytest.mark.parametrize("limit", ["lots", 1, 20_000_001, True, None])
def test_bad_export_limit_is_a_400(tmp_path: Path, limit: object) -> None:
    """The export validates its limit before enqueueing."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/example.db"})
    answer = app.test_client().post("/exports", json={"limit": limit})
    assert answer.status_code == 400
    assert "limit must be an int" in json_of(answer)["errors"][0]["message"]


def test_page_offers_the_export(tmp_path: Path) -> None:
    """The page has the export's form, its bar and its link."""
    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/example.db"})
    page = app.test_client().get("/").get_data(as_text=True)
    for marker in ('id="export-form"', 'id="export-bar"', 'id="export-link"', "exportJob.save()"):
        assert marker in page
