"""The dashboard's tests' app and helpers: open it, add jobs, read its pages."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from flask import Flask

from flask_async_request import AsyncRequest, Job, JobStatus
from tests.conftest import AppFactory, add_job, current_db

PREFIX = "/async-request/dashboard"


def open_dashboard(
    make_app: AppFactory, authorize: Callable[[], bool] | None = lambda: True, **config: Any
) -> Flask:
    """A new app whose extension opens the dashboard to the requests ``authorize`` allows."""
    extension = AsyncRequest()
    app = make_app(extension=extension, **config)
    extension.init_dashboard(app, authorize=authorize)
    return app


def job_ids(html: str) -> list[int]:
    """The ids of the jobs a list page shows, in its order."""
    return [int(found) for found in re.findall(r'<tr data-job-id="(\d+)"', html)]


def csrf_token(client: Any, job_id: int, page: str = "") -> str:
    """The CSRF token of the client's session, from a form of the job's page (or its ``page``)."""
    html = client.get(f"{PREFIX}/jobs/{job_id}{page}").get_data(as_text=True)
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def stored(app: Flask, job_id: int) -> Job:
    """Job ``job_id`` as stored now, detached from any session."""
    with app.app_context():
        job = current_db().session.get(Job, job_id)
        assert job is not None
        current_db().session.expunge(job)
        return job


def add(app: Flask, **fields: Any) -> int:
    """Insert a job with ``fields`` set on it; its id."""
    with app.app_context():
        job = add_job(
            fields.pop("worker", "tests.workers:Echo"), fields.pop("status", JobStatus.WAITING)
        )
        for name, value in fields.items():
            setattr(job, name, value)
        current_db().session.commit()
        return job.id


@contextmanager
def statements(app: Flask) -> Iterator[list[tuple[str, Any]]]:
    """Record the SQL statements the app's engine runs, with their parameters."""
    with app.app_context():
        engine = current_db().engine
    seen: list[tuple[str, Any]] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, *args: Any) -> None:
        seen.append((statement, parameters))

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
