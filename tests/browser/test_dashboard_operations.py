"""The dashboard's operator tools in a real browser: counts, refresh, search, bulk, redelivery."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from flask_async_request import JobStatus
from flask_async_request.callbacks import deliver
from tests.browser.conftest import listed
from tests.conftest import Receiver
from tests.dashboards import add, stored

pytestmark = pytest.mark.browser


def test_operator_tools(page: Any, dashboard_url: str, dashboard_app: Flask) -> None:
    """Chips count, refresh pauses, search finds, a bulk cancel asks then acts, a redelivery."""
    app = dashboard_app
    waiting = [add(app, status=JobStatus.WAITING, owner="ada") for _ in range(3)]
    failed = add(app, status=JobStatus.FAILED, owner="bob")
    receiver = Receiver()
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    try:
        called = add(app, status=JobStatus.PROCESSED, status_code=200, callback_url=receiver.url)
        with app.app_context():
            deliver(called)

        page.goto(dashboard_url)
        assert page.text_content("#count-waiting") == "3"
        assert page.text_content("#count-failed") == "1"
        assert page.query_selector("#auto-refresh") is not None
        page.click("#refresh-pause")
        assert page.query_selector("#auto-refresh") is None
        assert "refresh=0" in page.url

        page.fill("#search", "ada")
        page.click("#search-submit")
        assert listed(page) == waiting[::-1]
        page.click("#bulk-cancel")
        assert page.text_content("h1") == "Cancel 3 jobs?"
        page.click("#confirm")
        assert "3 jobs are cancelled." in page.text_content("main")
        assert {stored(app, job_id).status for job_id in waiting} == {JobStatus.CANCELLED}
        assert stored(app, failed).status is JobStatus.FAILED

        page.fill("#search", str(called))
        page.click("#search-submit")
        assert page.text_content("h1").startswith(f"Job {called}")
        assert page.text_content("#deliveries tbody tr td:nth-child(2)") == "delivered"
        page.click("#redeliver")
        page.click("#confirm")
        assert "redelivered: delivered (200)" in page.text_content("main")
        assert len(page.query_selector_all("#deliveries tbody tr")) == 2
        assert len(receiver.calls) == 2

        page.click("#nav-queues")
        assert page.text_content("h1") == "Queues"
        assert page.query_selector("#no-waiting") is not None
    finally:
        receiver.server.shutdown()
    assert problems == []
