"""dashboard_queues: each queue's depth and oldest wait, and the worker processes seen."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_async_request import JobStatus
from flask_async_request.values import utcnow
from tests.dashboards import PREFIX, add


def test_each_queue_shows_its_waiting_jobs_and_oldest_wait(dash: Flask) -> None:
    """Waiting jobs are counted per queue, with how long the first due has waited."""
    add(dash, status=JobStatus.WAITING, queue="reports", due_at=utcnow() - timedelta(minutes=5))
    add(dash, status=JobStatus.WAITING, queue="reports")
    add(dash, status=JobStatus.WAITING)
    add(dash, status=JobStatus.FAILED, queue="reports")
    html = dash.test_client().get(f"{PREFIX}/queues").get_data(as_text=True)
    rows = dict(re.findall(r'<tr data-queue="([^"]+)">(.*?)</tr>', html, re.S))
    assert set(rows) == {"celery", "reports"}
    numbers = re.findall(r'<td class="num">(?:<a [^>]*>)?([^<]+)', rows["reports"])
    assert numbers[0] == "2" and numbers[1].startswith("5m")
    # Eager mode: the jobs run in process, no worker is asked.
    assert 'id="no-broker"' in html


def test_no_waiting_job_says_so(dash: Flask) -> None:
    html = dash.test_client().get(f"{PREFIX}/queues").get_data(as_text=True)
    assert 'id="no-waiting"' in html


def test_the_workers_seen_and_a_queue_no_one_consumes(
    dash: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each worker that answers is listed with its queues; a queue none consumes is flagged."""
    from flask_async_request import dashboard_queues

    def consumers(timeout: float) -> dict[str, list[str]]:
        return {"w1@host": ["celery"]}

    monkeypatch.setattr(dashboard_queues, "consumers", consumers)
    add(dash, status=JobStatus.WAITING, queue="reports")
    add(dash, status=JobStatus.WAITING)
    html = dash.test_client().get(f"{PREFIX}/queues").get_data(as_text=True)
    rows: dict[str, Any] = dict(re.findall(r'<tr data-queue="([^"]+)">(.*?)</tr>', html, re.S))
    assert "w1@host" in rows["celery"] and "no worker" in rows["reports"]
    assert re.search(r'<table id="workers">.*w1@host.*celery', html, re.S)


def test_a_broker_out_of_reach_is_said_and_the_depths_still_shown(
    dash: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The workers cannot be asked: the page says so (200, not a 500), the depths are shown."""
    from flask_async_request import BrokerUnavailable, dashboard_queues

    def consumers(timeout: float) -> dict[str, list[str]]:
        raise BrokerUnavailable("The broker could not be reached to ask the workers (Error).")

    monkeypatch.setattr(dashboard_queues, "consumers", consumers)
    add(dash, status=JobStatus.WAITING)
    answer = dash.test_client().get(f"{PREFIX}/queues")
    html = answer.get_data(as_text=True)
    assert answer.status_code == 200
    assert re.search(r'id="broker-unreachable">The broker could not be reached', html)
    rows = dict(re.findall(r'<tr data-queue="([^"]+)">(.*?)</tr>', html, re.S))
    assert "unknown" in rows["celery"] and "no worker" not in rows["celery"]
