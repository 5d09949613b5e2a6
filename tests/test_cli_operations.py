"""The commands that operate the library, called as commands of their own."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import click
import pytest
from flask import Flask
from flask_migrate import Migrate

from flask_async_request import Job, JobStatus
from flask_async_request.cli import operations
from flask_async_request.values import utcnow
from tests.conftest import AppFactory, add_job, current_db, reload_job


def _invoke(app: Flask, command: click.Command, *args: str) -> Any:
    return app.test_cli_runner().invoke(command, list(args))


def _old_jobs(app: Flask) -> list[int]:
    """A processed and a waiting job, both two days old."""
    old = utcnow() - timedelta(days=2)
    with app.app_context():
        done = add_job(status=JobStatus.PROCESSED, finished_at=old)
        waiting = add_job()
        done.created_at = waiting.created_at = old
        current_db().session.commit()
        return [done.id, waiting.id]


def test_purge_dry_run_counts_and_deletes_nothing(make_app: AppFactory) -> None:
    """--dry-run says how many finished jobs would go; every row stays."""
    app = make_app()
    ids = _old_jobs(app)
    result = _invoke(app, operations.purge_command, "--older-than", "1d", "--dry-run")
    assert result.output == "Would delete 1 jobs (processed, failed, cancelled) older than 1d00h.\n"
    with app.app_context():
        assert [reload_job(job_id).id for job_id in ids] == ids


def test_purge_deletes_the_statuses_named_only(make_app: AppFactory) -> None:
    """--status waiting deletes the old waiting job, not the processed one."""
    app = make_app()
    done, waiting = _old_jobs(app)
    result = _invoke(app, operations.purge_command, "--older-than", "1d", "--status", "waiting")
    assert result.exit_code == 0, result.output
    assert "Deleted 1 jobs (waiting)" in result.output
    with app.app_context():
        assert reload_job(done).status is JobStatus.PROCESSED
        assert current_db().session.get(Job, waiting) is None


def test_purge_with_nothing_to_delete_says_so(make_app: AppFactory) -> None:
    """No job past its retention: one line, no progress bar."""
    result = _invoke(make_app(), operations.purge_command)
    assert result.output == "No jobs (processed, failed, cancelled) past their retention.\n"


def test_a_bad_duration_is_a_usage_error(make_app: AppFactory) -> None:
    """click's exit code 2 and the parser's sentence."""
    result = _invoke(make_app(), operations.purge_command, "--older-than", "soon")
    assert result.exit_code == 2
    assert "such as 90, 15m, 2h or 7d" in result.output


def test_in_embedded_mode_waiting_jobs_are_left_to_the_web_process(make_app: AppFactory) -> None:
    """The sentence names the waiting jobs and the setting that times their sweep."""
    app = make_app(CELERY={})
    with app.app_context():
        text = operations._left_to_the_web_process(3)
    assert "runs the 3 waiting jobs when it next starts" in text
    assert "ASYNC_REQUEST_WAITING_TIMEOUT" in text


@pytest.mark.parametrize("config", [{}, {"task_always_eager": True}])
def test_a_worker_needs_a_broker(make_app: AppFactory, config: dict[str, Any]) -> None:
    """Embedded mode and eager Celery have nothing for a separate worker to consume."""
    app = make_app(CELERY=config)
    with app.app_context(), pytest.raises(click.ClickException, match="No broker is configured"):
        operations._broker_required("worker")


def test_init_writes_the_settings_snippet_once(
    make_app: AppFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second init leaves the snippet as it is, and says --force rewrites it."""
    monkeypatch.chdir(tmp_path)
    app = make_app()
    Migrate(app, app.extensions["sqlalchemy"], directory=str(tmp_path / "migrations"))
    snippet = tmp_path / "settings.py"
    first = _invoke(app, operations.init_command, "--config-file", str(snippet))
    assert first.exit_code == 0, first.output
    assert f"Wrote the settings snippet: {snippet}" in first.output
    snippet.write_text("# mine\n")
    again = _invoke(app, operations.init_command, "--config-file", str(snippet))
    assert "left as is (--force rewrites it)" in again.output
    assert snippet.read_text() == "# mine\n"
