"""The dashboard's operator tools: the delivery log, redelivery, counts, refresh, search."""

from __future__ import annotations

import re

from flask import Flask

from flask_async_request import JobStatus
from flask_async_request.callbacks import deliver
from flask_async_request.deliveries import decode
from tests.conftest import Receiver, current_db
from tests.dashboards import PREFIX, add, csrf_token, stored


def _delivered(app: Flask, url: str) -> int:
    job_id = add(app, status=JobStatus.PROCESSED, status_code=200, callback_url=url)
    with app.app_context():
        deliver(job_id)
        current_db().session.remove()
    return job_id


def test_the_job_page_shows_the_delivery_log(dash: Flask) -> None:
    """Each delivery is a row: outcome, host only, answer, time taken."""
    receiver = Receiver()
    try:
        job_id = _delivered(dash, receiver.url + "?token=s3cr3t")
    finally:
        receiver.server.shutdown()
    html = dash.test_client().get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    [table] = re.findall(r'<table id="deliveries">.*?</table>', html, re.S)
    assert "delivered" in table and "127.0.0.1" in table and "200" in table
    assert "s3cr3t" not in table
    assert f'href="{PREFIX}/jobs/{job_id}/redeliver"' in html


def test_redeliver_asks_first_then_posts_with_csrf(dash: Flask) -> None:
    """GET shows a confirmation; its POST, with the session's token, delivers once more."""
    receiver = Receiver()
    try:
        job_id = _delivered(dash, receiver.url)
        client = dash.test_client()
        confirm = client.get(f"{PREFIX}/jobs/{job_id}/redeliver").get_data(as_text=True)
        assert "same webhook-id" in confirm and len(receiver.calls) == 1
        token = csrf_token(client, job_id, "/redeliver")
        refused = client.post(f"{PREFIX}/jobs/{job_id}/redeliver", data={"csrf_token": "x"})
        assert refused.status_code == 400 and len(receiver.calls) == 1
        done = client.post(
            f"{PREFIX}/jobs/{job_id}/redeliver", data={"csrf_token": token}, follow_redirects=True
        )
    finally:
        receiver.server.shutdown()
    assert done.status_code == 200
    assert "redelivered: delivered (200)" in done.get_data(as_text=True)
    assert len(receiver.calls) == 2
    log = decode(stored(dash, job_id).callback_deliveries)
    assert [entry.redelivery for entry in log] == [False, True]


def test_redeliver_without_a_callback_says_so(dash: Flask) -> None:
    """A job with no callback url: no button, and a POST explains instead of failing."""
    job_id = add(dash, status=JobStatus.PROCESSED)
    client = dash.test_client()
    token = csrf_token(client, job_id, "/redeliver")
    html = client.get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    assert "/redeliver" not in html
    done = client.post(
        f"{PREFIX}/jobs/{job_id}/redeliver", data={"csrf_token": token}, follow_redirects=True
    )
    assert done.status_code == 200 and "no callback url" in done.get_data(as_text=True)
    missing = client.post(f"{PREFIX}/jobs/424242/redeliver", data={"csrf_token": token})
    assert missing.status_code == 404
    assert client.get(f"{PREFIX}/jobs/424242/redeliver").status_code == 404


# The list: counts, refresh, search, bulk actions -----------------------------------


def _form_token(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def test_the_chips_count_each_status(dash: Flask) -> None:
    """Each status chip carries how many of the newest jobs have it."""
    for status in (JobStatus.FAILED, JobStatus.FAILED, JobStatus.WAITING):
        add(dash, status=status)
    html = dash.test_client().get(f"{PREFIX}/").get_data(as_text=True)
    assert re.search(r'id="count-failed">2<', html) and re.search(r'id="count-waiting">1<', html)
    assert re.search(r'id="count-cancelled">0<', html) and "counts-window" not in html


def test_the_list_refreshes_itself_until_paused(dash: Flask) -> None:
    """The list reloads every few seconds; refresh=0 pauses it, and the filters keep it."""
    client = dash.test_client()
    html = client.get(f"{PREFIX}/?status=failed").get_data(as_text=True)
    assert '<meta http-equiv="refresh" content="10"' in html
    [pause] = re.findall(r'href="([^"]+)" id="refresh-pause"', html)
    paused = client.get(pause.replace("&amp;", "&")).get_data(as_text=True)
    assert 'http-equiv="refresh"' not in paused and "refresh-resume" in paused
    [chip] = re.findall(r'<a href="([^"]+)"[^>]*data-status="waiting"', paused)
    assert "refresh=0" in chip and "status=waiting" in chip


def test_search_opens_a_job_by_id_or_uid_and_else_filters_by_owner(dash: Flask) -> None:
    """A job's id or uid opens its page; any other text lists that owner's jobs."""
    job_id = add(dash, owner="ada")
    uid = stored(dash, job_id).uid
    client = dash.test_client()
    by_id = client.get(f"{PREFIX}/?q={job_id}")
    assert by_id.status_code == 303 and by_id.location.endswith(f"/jobs/{job_id}")
    assert client.get(f"{PREFIX}/?q={uid.upper()}").location.endswith(f"/jobs/{job_id}")
    by_owner = client.get(f"{PREFIX}/?q=ada", follow_redirects=True).get_data(as_text=True)
    assert f'data-job-id="{job_id}"' in by_owner
    nobody = client.get(f"{PREFIX}/?q=999999", follow_redirects=True).get_data(as_text=True)
    assert "No jobs match these filters" in nobody


def test_a_failed_job_s_page_shows_its_traceback_escaped(dash: Flask) -> None:
    """The stored traceback is on the job's page, as text."""
    job_id = add(
        dash,
        status=JobStatus.FAILED,
        status_code=500,
        response='{"error": "x"}',
        traceback="Traceback (most recent call last):\n  <script>\nValueError: x\n",
    )
    html = dash.test_client().get(f"{PREFIX}/jobs/{job_id}").get_data(as_text=True)
    [shown] = re.findall(r'<pre id="job-traceback">(.*?)</pre>', html, re.S)
    assert "ValueError: x" in shown and "&lt;script&gt;" in shown
