"""Periodic cleanup: the beat task purges finished jobs past their retention."""

from __future__ import annotations

from datetime import timedelta

import pytest
from flask import Flask

from flask_async_request import Worker
from flask_async_request.broker import PURGE_TASK
from tests.conftest import AppFactory
from tests.test_retention import fill, fill_workers, remaining


def test_cleanup_task_uses_jobs_expiration(make_app: AppFactory) -> None:
    """The beat task purges with ASYNC_REQUEST_JOBS_EXPIRATION."""
    app = make_app(ASYNC_REQUEST_JOBS_EXPIRATION=timedelta(minutes=30))
    with app.app_context():
        fill()
        assert app.extensions["celery"].tasks[PURGE_TASK].delay().get() == 3
        assert remaining(app) == {"waiting", "processing"}


def test_cleanup_task_follows_worker_retention(app: Flask) -> None:
    """The beat task purges by each job's retention, not only the global age."""
    fill_workers()
    assert app.extensions["celery"].tasks[PURGE_TASK].delay().get() == 7
    assert "brief past" not in remaining(app)


@pytest.mark.parametrize("value", [-1, 0, "1h", float("nan")])
def test_bad_retention_is_refused_when_the_class_is_defined(value: object) -> None:
    """A retention the purge could not use is an error at once, not hours later."""
    with pytest.raises(ValueError, match=r"Bad\.retention is"):

        class Bad(Worker):
            retention = value  # type: ignore[assignment]
