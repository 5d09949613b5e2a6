"""The dashboard's view of a reply held in the result store: size, type, SHA-256, a signed link."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import pytest
from flask import Flask

from flask_async_request import Job, JobStatus, results
from tests import workers
from tests.conftest import AppFactory
from tests.dashboards import PREFIX, add, job_ids, open_dashboard

#: The bytes of ReturnChunks(3, 1000): three chunks of 1000 bytes, each of its index.
DATA = b"".join(bytes([i]) * 1000 for i in range(3))


@pytest.fixture
def dash(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> Flask:
    """An app with the dashboard open, whose result store writes chunks of 1000 bytes."""
    monkeypatch.setattr(results, "CHUNK_SIZE", 1000)
    return open_dashboard(make_app)


def _stored_job(app: Flask, **kwargs: Any) -> Job:
    """A processed job whose 3,000-byte reply is in the result store."""
    with app.app_context():
        job = Job.create_and_enqueue(workers.ReturnChunks, 3, 1000, **kwargs)
        assert job.status is JobStatus.PROCESSED
        assert job.result_size == len(DATA)
        return job


def _link(html: str) -> str:
    found = re.search(r'<a id="job-download" href="([^"]+)"', html)
    assert found, html
    return found.group(1).replace("&amp;", "&")


def test_job_page_shows_the_stored_result(dash: Flask) -> None:
    """Size, content type and SHA-256 of a reply in the result store, and no body."""
    job = _stored_job(dash)
    html = dash.test_client().get(f"{PREFIX}/jobs/{job.id}").get_data(as_text=True)
    assert '<dd id="job-result-size">2.9 KiB (3,000 bytes)</dd>' in html
    assert f'<code id="job-result-sha256">{hashlib.sha256(DATA).hexdigest()}</code>' in html
    assert '<dd id="job-content-type">application/octet-stream</dd>' in html
    assert 'id="job-response"' not in html


def test_job_page_links_the_bytes_with_a_signed_link_not_the_token(dash: Flask) -> None:
    """The page's download link serves the exact bytes; the job's token is nowhere in the page."""
    job = _stored_job(dash)
    client = dash.test_client()
    html = client.get(f"{PREFIX}/jobs/{job.id}").get_data(as_text=True)
    href = _link(html)
    assert href.startswith("http://localhost/async_request/download/")
    assert job.token not in html
    assert "valid until" in html
    downloaded = client.get(href)
    assert downloaded.status_code == 200
    assert downloaded.data == DATA


def test_an_owned_jobs_link_says_whom_it_serves(dash: Flask) -> None:
    """A job bound to an owner: the page says its link works for that owner only."""
    job_id = add(
        dash,
        status=JobStatus.PROCESSED,
        status_code=200,
        owner="alice",
        result_size=10,
        result_sha256="0" * 64,
        content_type="application/pdf",
    )
    html = dash.test_client().get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    assert 'id="job-download"' in html
    assert "only for alice, to whom the job is bound" in html


def test_kept_headers_are_shown(dash: Flask) -> None:
    """The headers a reply kept (its Content-Disposition) are on the job's page."""
    job_id = add(
        dash,
        status=JobStatus.PROCESSED,
        status_code=200,
        response="a,b",
        headers='[["Content-Disposition", "attachment; filename=\\"rows.csv\\""]]',
    )
    html = dash.test_client().get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    assert "<dt>Content-Disposition</dt>" in html
    assert "attachment; filename=&#34;rows.csv&#34;" in html
    # Kept in the row: its text is shown, and there is no stored result to link.
    assert '<pre id="job-response">a,b</pre>' in html
    assert 'id="job-download"' not in html


def test_a_text_reply_has_no_stored_result(dash: Flask) -> None:
    """A reply kept in the row shows its text as before, with no size or link."""
    job_id = add(dash, status=JobStatus.PROCESSED, status_code=200, response="done")
    html = dash.test_client().get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    assert '<pre id="job-response">done</pre>' in html
    assert "job-result-size" not in html


def test_list_shows_the_size_where_known(dash: Flask) -> None:
    """The list's Size column: the stored result's size, ``-`` for the others."""
    text_id = add(dash, status=JobStatus.PROCESSED, status_code=200, response="done")
    job = _stored_job(dash)
    html = dash.test_client().get(f"{PREFIX}/").get_data(as_text=True)
    assert job_ids(html) == [job.id, text_id]
    sizes = re.findall(r'<td class="num job-size"(?: title="([^"]*)")?>([^<]*)</td>', html)
    assert sizes == [("3,000 bytes", "2.9 KiB"), ("", "-")]
