"""One read side: the command line and the dashboard list the same jobs for the same filter."""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from flask import Flask

from flask_async_request import AsyncRequest, JobStatus
from flask_async_request.reading import JobFilter, job_ids, list_jobs
from flask_async_request.values import utcnow
from tests.conftest import AppFactory, add_job, current_db


@pytest.fixture
def mixed(make_app: AppFactory) -> Flask:
    """Jobs in several statuses, one created long ago though its id is newer than others'."""
    extension = AsyncRequest()
    app = make_app(extension=extension)
    extension.init_dashboard(app, authorize=lambda: True)
    now = utcnow()
    with app.app_context():
        add_job(status=JobStatus.PROCESSED, finished_at=now)
        add_job(status=JobStatus.FAILED, finished_at=now, status_code=500)
        add_job(status=JobStatus.WAITING).created_at = now - timedelta(days=2)
        add_job(status=JobStatus.PROCESSED, finished_at=now).created_at = now - timedelta(hours=3)
        add_job(status=JobStatus.PROCESSING)
        current_db().session.commit()
    return app


def _cli_ids(app: Flask, *args: str) -> list[int]:
    result = app.test_cli_runner().invoke(args=["async-request", "list", "--json", *args])
    assert result.exit_code == 0, result.output
    return [job["id"] for job in json.loads(result.output)]


def _dashboard_ids(app: Flask, query: str) -> list[int]:
    response = app.test_client().get(f"/async-request/dashboard/?{query}")
    assert response.status_code == 200
    html = response.get_data(as_text=True)
    return [int(found) for found in re.findall(r'<tr data-job-id="(\d+)"', html)]


@pytest.mark.parametrize(
    ("cli", "query"),
    [
        ((), ""),
        (("--status", "processed"), "status=processed"),
        (("--older-than", "1d"), "older_than=1d"),
        (("--older-than", "1h"), "older_than=1h"),
        (("--newer-than", "1h"), "newer_than=1h"),
        (("--newer-than", "1d", "--older-than", "1h"), "newer_than=1d&older_than=1h"),
        (("--status", "waiting", "--newer-than", "1h"), "status=waiting&newer_than=1h"),
    ],
)
def test_cli_and_dashboard_list_the_same_jobs(
    mixed: Flask, cli: tuple[str, ...], query: str
) -> None:
    """A filter lists the same jobs, in the same order, on the command line and the dashboard."""
    assert _cli_ids(mixed, *cli) == _dashboard_ids(mixed, query)


def test_an_age_filter_reads_each_jobs_creation_time(mixed: Flask) -> None:
    """A job whose creation time does not follow its id is listed by its creation time."""
    with mixed.app_context():
        assert [job.id for job in list_jobs(older_than=timedelta(days=1))] == [3]
        assert [job.id for job in list_jobs(older_than=timedelta(hours=1))] == [4, 3]
        assert [job.id for job in list_jobs(newer_than=timedelta(hours=1))] == [5, 2, 1]


def test_a_filter_from_a_url_names_one_status() -> None:
    """The dashboard's ?status= is a filter on that one status."""
    filters = JobFilter.from_args({"status": "failed"})
    assert filters.statuses == (JobStatus.FAILED,)
    assert filters.status is JobStatus.FAILED
    assert JobFilter().status is None


def test_the_owner_filter_and_the_ids_of_a_selection(app: Flask) -> None:
    """JobFilter.owner narrows a list; job_ids gives the newest ids first, at most limit."""
    ids = []
    for owner in ("alice", "bob", "alice"):
        job = add_job()
        job.owner = owner
        current_db().session.commit()
        ids.append(job.id)
    assert job_ids(JobFilter(owner="alice"), 10) == [ids[2], ids[0]]
    assert job_ids(JobFilter(owner="alice"), 1) == [ids[2]]
    assert [job.id for job in list_jobs(owner="bob")] == [ids[1]]
    assert JobFilter.from_args({"owner": " bob "}).owner == "bob"
    assert JobFilter().empty and not JobFilter(owner="bob").empty
