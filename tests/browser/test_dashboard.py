"""The jobs dashboard in a real browser: list, filter, open, retry, cancel; no markup runs."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_async_request import JobStatus
from flask_async_request.values import utcnow
from tests.browser.conftest import listed
from tests.dashboards import add, stored

pytestmark = pytest.mark.browser

SCRIPT = "<script>window.injected = true</script>"


def test_operator_session(page: Any, dashboard_url: str, dashboard_app: Flask) -> None:
    """List, filter by status and worker, open jobs, retry a failed one, cancel a running one."""
    app = dashboard_app
    processed = add(app, status=JobStatus.PROCESSED, status_code=200, response="fine")
    failed = add(
        app,
        status=JobStatus.FAILED,
        params={"args": ["again"], "kwargs": {}},
        status_code=500,
        response='{"error": "disk full"}',
        finished_at=utcnow(),
    )
    running = add(
        app,
        worker="tests.workers:Sleep",
        status=JobStatus.PROCESSING,
        params={"args": [60], "kwargs": {}},
        attempts=1,
        started_at=utcnow(),
    )
    hostile = add(app, status=JobStatus.PROCESSED, status_code=200, response=SCRIPT)
    problems: list[str] = []
    page.on("console", lambda message: problems.append(message.text))
    page.on("pageerror", lambda error: problems.append(str(error)))

    page.goto(dashboard_url)
    assert listed(page) == [hostile, running, failed, processed]
    # The styles, allowed by the page's nonce, apply.
    weight = page.eval_on_selector("#jobs th", "th => getComputedStyle(th).fontWeight")
    assert weight == "600"

    page.select_option("#filter-status", "failed")
    page.click("#filter-submit")
    assert listed(page) == [failed]
    page.click(f"#jobs a[href$='/jobs/{failed}']")
    assert page.text_content("#job-status") == "failed"
    assert page.text_content("#job-error") == "disk full"
    page.click("#retry")
    assert f"Job {failed} is waiting to run again." in page.text_content("main")
    # Celery runs eagerly here, so the retried Echo job has run by now.
    assert page.text_content("#job-status") == "processed"
    assert '"args": ["again"]' in page.text_content("#job-response")
    assert stored(app, failed).status is JobStatus.PROCESSED

    page.goto(dashboard_url)
    page.fill("#filter-worker", "tests.workers:Sleep")
    page.click("#filter-submit")
    assert listed(page) == [running]
    page.click(f"#jobs a[href$='/jobs/{running}']")
    assert page.text_content("#job-ran").endswith("so far")
    page.click("#cancel")
    assert f"Job {running} is cancelled." in page.text_content("main")
    assert page.text_content("#job-status") == "cancelled"
    assert page.query_selector("#cancel") is None
    assert stored(app, running).status is JobStatus.CANCELLED

    page.goto(dashboard_url)
    page.click(f"#jobs a[href$='/jobs/{hostile}']")
    assert page.text_content("#job-response") == SCRIPT
    assert page.evaluate("window.injected") is None
    assert page.query_selector("main script") is None
    assert problems == []
