"""dashboard_bulk: retry, cancel and delete of a list's selection, confirmed, with CSRF."""

from __future__ import annotations

import re

from flask import Flask

from flask_async_request import Job, JobStatus
from tests.conftest import current_db
from tests.dashboards import PREFIX, add, stored
from tests.test_dashboard_operations import _form_token


def test_a_bulk_retry_names_the_jobs_then_acts_on_post(dash: Flask) -> None:
    """The selection's retry asks first, naming the jobs; the POST with CSRF retries them."""
    failed = [add(dash, status=JobStatus.FAILED, owner="ada") for _ in range(2)]
    other = add(dash, status=JobStatus.FAILED, owner="bob")
    client = dash.test_client()
    listed = client.get(f"{PREFIX}/?owner=ada").get_data(as_text=True)
    [link] = re.findall(r'id="bulk-retry" href="([^"]+)"', listed)
    confirm = client.get(link.replace("&amp;", "&")).get_data(as_text=True)
    assert "Retry 2 jobs?" in confirm and all(str(i) in confirm for i in failed)
    form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', confirm))
    assert client.post(f"{PREFIX}/bulk/retry", data={**form, "csrf_token": ""}).status_code == 400
    assert {stored(dash, i).status for i in failed} == {JobStatus.FAILED}
    done = client.post(f"{PREFIX}/bulk/retry", data=form, follow_redirects=True)
    assert "2 jobs are waiting to run again." in done.get_data(as_text=True)
    # Waiting again, or run already by the eager worker.
    assert JobStatus.FAILED not in {stored(dash, i).status for i in failed}
    assert stored(dash, other).status is JobStatus.FAILED


def test_a_bulk_delete_and_cancel(dash: Flask) -> None:
    """Delete takes the finished jobs of the selection, cancel the pending ones."""
    done = add(dash, status=JobStatus.PROCESSED, owner="ada")
    waiting = add(dash, status=JobStatus.WAITING, owner="ada")
    client = dash.test_client()
    for action in ("delete", "cancel"):
        confirm = client.get(f"{PREFIX}/bulk/{action}?owner=ada").get_data(as_text=True)
        form = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', confirm))
        assert client.post(f"{PREFIX}/bulk/{action}", data=form).status_code == 303
    assert stored(dash, waiting).status is JobStatus.CANCELLED
    with dash.app_context():
        assert current_db().session.get(Job, done) is None


def test_bulk_actions_refuse_what_is_not_a_selection(dash: Flask) -> None:
    """No filter, an unknown action or ids that are not numbers: no action, a message or a 4xx."""
    add(dash, status=JobStatus.FAILED)
    client = dash.test_client()
    unfiltered = client.get(f"{PREFIX}/bulk/retry", follow_redirects=True)
    assert "needs a selection" in unfiltered.get_data(as_text=True)
    assert client.get(f"{PREFIX}/bulk/explode?owner=x").status_code == 404
    confirm = client.get(f"{PREFIX}/bulk/cancel?status=failed", follow_redirects=True)
    assert "Only waiting or processing jobs" in confirm.get_data(as_text=True)
    token = _form_token(client.get(f"{PREFIX}/jobs/1/redeliver").get_data(as_text=True))
    bad = client.post(f"{PREFIX}/bulk/retry", data={"csrf_token": token, "ids": "1,x"})
    assert bad.status_code == 400
