"""The `flask async-request` operator commands, run through Flask's CLI runner."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_async_request import Job, JobStatus
from flask_async_request.broker import PURGE_TASK
from flask_async_request.values import utcnow
from tests import workers
from tests.conftest import AppFactory, Internals, add_job, current_db, reload_job


def run(app: Flask, *args: str) -> Any:
    return app.test_cli_runner().invoke(args=["async-request", *args])


def _statuses(app: Flask) -> list[str]:
    with app.app_context():
        session = current_db().session
        return sorted(job.response or "" for job in session.query(Job))


@pytest.fixture
def filled(make_app: AppFactory) -> Flask:
    """An app with old and recent jobs in every status; each job's response names it."""
    app = make_app()
    old, recent = utcnow() - timedelta(days=2), utcnow() - timedelta(minutes=5)
    with app.app_context():
        add_job(status=JobStatus.PROCESSED, response="old processed", finished_at=old)
        add_job(status=JobStatus.FAILED, response="old failed", finished_at=old, status_code=500)
        add_job(status=JobStatus.PROCESSED, response="recent processed", finished_at=recent)
        job = add_job(status=JobStatus.WAITING, response="old waiting")
        job.created_at = old
        add_job(status=JobStatus.PROCESSING, response="processing")
        current_db().session.commit()
    return app


def test_purge_deletes_old_finished_jobs(filled: Flask) -> None:
    """By default purge deletes finished jobs past their retention (here the global one)."""
    result = run(filled, "purge")
    assert result.exit_code == 0, result.output
    assert "Deleted 2 jobs (processed, failed, cancelled) past their retention." in result.output
    assert _statuses(filled) == ["old waiting", "processing", "recent processed"]


def test_purge_deletes_old_cancelled_jobs(filled: Flask) -> None:
    """Cancelled jobs are finished jobs: purge deletes them by default, the recent ones kept."""
    with filled.app_context():
        add_job(
            status=JobStatus.CANCELLED,
            response="old cancelled",
            finished_at=utcnow() - timedelta(days=3),
        )
        add_job(status=JobStatus.CANCELLED, response="recent cancelled", finished_at=utcnow())
    result = run(filled, "purge")
    assert "Deleted 3 jobs" in result.output
    assert "old cancelled" not in _statuses(filled)
    assert "recent cancelled" in _statuses(filled)


def test_scheduled_purge_deletes_old_cancelled_jobs(filled: Flask) -> None:
    """The periodic purge task deletes old cancelled jobs too."""
    with filled.app_context():
        add_job(
            status=JobStatus.CANCELLED,
            response="old cancelled",
            finished_at=utcnow() - timedelta(days=3),
        )
        purge = filled.extensions["celery"].tasks[PURGE_TASK]
        assert purge.apply().get() == 3
    assert "old cancelled" not in _statuses(filled)


def test_purge_older_than_zero_means_now(filled: Flask) -> None:
    """--older-than 0s deletes every finished job, not those past the default age."""
    result = run(filled, "purge", "--older-than", "0s")
    assert "Deleted 3 jobs" in result.output
    assert _statuses(filled) == ["old waiting", "processing"]


def test_purge_dry_run_deletes_nothing(filled: Flask) -> None:
    """--dry-run only counts."""
    result = run(filled, "purge", "--dry-run")
    assert "Would delete 2 jobs" in result.output
    assert len(_statuses(filled)) == 5


def test_purge_older_than(filled: Flask) -> None:
    """--older-than overrides the configured age."""
    result = run(filled, "purge", "--older-than", "1m")
    assert "Deleted 3 jobs" in result.output
    assert _statuses(filled) == ["old waiting", "processing"]


def test_purge_pending_only_when_named(filled: Flask) -> None:
    """Waiting jobs go only when --status names them."""
    result = run(filled, "purge", "--status", "waiting", "--older-than", "1d")
    assert "Deleted 1 jobs (waiting)" in result.output
    assert "old waiting" not in _statuses(filled)
    assert "processing" in _statuses(filled)


def test_purge_in_small_batches(filled: Flask) -> None:
    """--batch-size 1 still deletes every matching job."""
    assert (
        "Deleted 3 jobs" in run(filled, "purge", "--older-than", "1m", "--batch-size", "1").output
    )


def test_purge_bad_duration_is_an_error_line(filled: Flask) -> None:
    """A bad --older-than is a usage error naming the option, not a traceback."""
    result = run(filled, "purge", "--older-than", "soon")
    assert result.exit_code == 2
    assert "Invalid value for '--older-than'" in result.output
    assert "Traceback" not in result.output


def test_list_shows_a_table(filled: Flask) -> None:
    """list prints a header and one row per job, newest first."""
    result = run(filled, "list")
    lines = result.output.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "CODE", "WORKER", "AGE", "TRIES"]
    assert [line.split()[0] for line in lines[1:]] == ["5", "4", "3", "2", "1"]


def test_list_filters_by_status_and_age(filled: Flask) -> None:
    """--status and --older-than narrow the list."""
    assert [
        ln.split()[0] for ln in run(filled, "list", "--status", "failed").output.splitlines()[1:]
    ] == ["2"]
    older = run(filled, "list", "--older-than", "1d").output.splitlines()[1:]
    assert [line.split()[1] for line in older] == ["waiting"]
    newer = run(filled, "list", "--newer-than", "1h").output.splitlines()[1:]
    assert len(newer) == 4
    assert (
        run(filled, "list", "--status", "failed", "--older-than", "1h").output.strip() == "No jobs."
    )


def test_show_prints_the_job(filled: Flask) -> None:
    """show prints params, reply and times of one job."""
    result = run(filled, "show", "2")
    assert result.exit_code == 0
    assert re.search(r"^status +failed$", result.output, re.MULTILINE)
    assert re.search(r"^status code +500$", result.output, re.MULTILINE)
    assert re.search(r"^callback status +-$", result.output, re.MULTILINE)
    assert '"args": []' in result.output
    assert "finished at" in result.output


def test_show_missing_job_is_an_error_line(filled: Flask) -> None:
    """An unknown id is 'Error: ...' with exit code 1."""
    result = run(filled, "show", "999")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: There is no job 999."


def test_retry_runs_a_failed_job_again(make_app: AppFactory, tmp_path: Path) -> None:
    """retry puts a failed job back and it runs again."""
    app = make_app()
    with app.app_context():
        job_id = Job.create_and_enqueue(workers.FlakyThenOk, str(tmp_path / "runs"), 1).id
        job = current_db().session.get(Job, job_id)
        assert job is not None
        assert job.status is JobStatus.FAILED
    result = run(app, "retry", str(job_id))
    assert result.output.strip() == f"Job {job_id} is waiting to run again."
    with app.app_context():
        job = current_db().session.get(Job, job_id)
        assert job is not None
        assert (job.status, job.response) == (JobStatus.PROCESSED, "2")


def test_retry_refuses_a_job_that_did_not_fail(filled: Flask) -> None:
    """Only failed jobs can be retried."""
    result = run(filled, "retry", "1")
    assert result.exit_code == 1
    assert "Error: Job 1 is processed; only failed jobs can be retried." in result.output


def test_stats(filled: Flask) -> None:
    """stats counts per status, the oldest waiting job and the last hour's finished jobs."""
    output = run(filled, "stats").output
    assert "processed   2" in output
    assert "failed      1" in output
    assert "oldest waiting job: 2d00h" in output
    assert "finished in the last hour: 1" in output


def test_missing_table_is_an_error_line(make_app: AppFactory) -> None:
    """A database without the jobs table gives advice, not a traceback."""
    app = make_app(create_tables=False)
    result = run(app, "stats")
    assert result.exit_code == 1
    assert result.output.startswith("Error: The database refused the query")
    assert "flask db upgrade" in result.output


@pytest.mark.parametrize("command", ["worker", "beat"])
def test_worker_and_beat_need_a_broker(make_app: AppFactory, command: str) -> None:
    """Without a broker, worker and beat explain what to configure."""
    app = make_app(CELERY={})
    result = run(app, command)
    assert result.exit_code == 1
    assert "No broker is configured" in result.output


@pytest.mark.parametrize(
    "command",
    [
        "init",
        "purge",
        "sweep",
        "list",
        "show",
        "retry",
        "cancel",
        "redeliver",
        "stats",
        "worker",
        "beat",
    ],
)
def test_every_command_has_help(app: Flask, command: str) -> None:
    """--help explains each command."""
    result = run(app, command, "--help")
    assert result.exit_code == 0
    assert "Usage: " in result.output
    assert len(result.output.splitlines()) > 3


# --json ------------------------------------------------------------------------------

LIST_KEYS = {
    "id",
    "uid",
    "status",
    "worker",
    "status_code",
    "attempts",
    "owner",
    "progress",
    "created_at",
    "started_at",
    "finished_at",
}
SHOW_KEYS = LIST_KEYS | {
    "callback_deliveries",
    "traceback",
    "params",
    "response",
    "content_type",
    "progress_message",
    "callback_url",
    "callback_status",
    "due_at",
    "updated_at",
    "lease_expires_at",
    "headers",
    "result_size",
    "result_sha256",
    "download_url",
}


def _utc(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    assert moment.utcoffset() == timedelta(0), text
    return moment


def test_list_json(filled: Flask) -> None:
    """list --json prints an array, newest first, with the same keys on every job."""
    result = run(filled, "list", "--json")
    assert result.exit_code == 0, result.output
    jobs = json.loads(result.output)
    assert [job["id"] for job in jobs] == [5, 4, 3, 2, 1]
    assert all(set(job) == LIST_KEYS for job in jobs)
    failed = jobs[3]
    assert (failed["status"], failed["status_code"]) == ("failed", 500)
    assert failed["started_at"] is None
    assert _utc(failed["finished_at"]) < _utc(failed["created_at"])


def test_list_json_keeps_the_filters(filled: Flask) -> None:
    """Filters apply to --json; nothing found is an empty array."""
    assert [
        job["id"] for job in json.loads(run(filled, "list", "--json", "--status", "failed").output)
    ] == [2]
    assert json.loads(run(filled, "list", "--json", "--status", "cancelled").output) == []


def test_show_json(filled: Flask) -> None:
    """show --json prints every stored field, times in ISO 8601 UTC."""
    with filled.app_context():
        job = current_db().session.get(Job, 2)
        assert job is not None
        job.params = {"args": [1, "ü"], "kwargs": {"size": "small"}}
        job.progress, job.callback_url = float("nan"), "https://client.example/hook"
        current_db().session.commit()
    result = run(filled, "show", "--json", "2")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    assert set(record) == SHOW_KEYS
    assert record["params"] == {"args": [1, "ü"], "kwargs": {"size": "small"}}
    assert (record["status"], record["response"]) == ("failed", "old failed")
    assert record["progress"] is None
    assert record["callback_url"] == "https://client.example/hook"
    for key in ("created_at", "updated_at", "due_at", "finished_at"):
        _utc(record[key])
    assert record["lease_expires_at"] is None


def test_show_json_missing_job_is_an_error_line(filled: Flask) -> None:
    """An unknown id stays an error, not JSON."""
    result = run(filled, "show", "--json", "999")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: There is no job 999."


def test_stats_json(filled: Flask) -> None:
    """stats --json counts every status and gives ages in seconds."""
    stats = json.loads(run(filled, "stats", "--json").output)
    assert stats == {
        "counts": {"waiting": 1, "processing": 1, "processed": 2, "failed": 1, "cancelled": 0},
        "oldest_waiting_age_seconds": pytest.approx(2 * 86400, abs=60),
        "finished_last_hour": 1,
        "waiting_by_queue": {"celery": 1},
        "queues_without_workers": [],
    }


def test_stats_json_without_waiting_jobs(make_app: AppFactory) -> None:
    """No waiting job: its age is null."""
    stats = json.loads(run(make_app(), "stats", "--json").output)
    assert stats["oldest_waiting_age_seconds"] is None
    assert set(stats["counts"].values()) == {0}


def test_sweep_in_embedded_mode_sends_nothing_and_says_who_runs_the_jobs(
    make_app: AppFactory,
    internals: Internals,
) -> None:
    """With no broker, sweep sends no message and says the web process's worker runs the jobs."""
    app = make_app(CELERY={})
    with app.app_context():
        job = add_job()
        job.due_at = utcnow() - timedelta(hours=1)
        current_db().session.commit()
        job_id = job.id
    result = run(app, "sweep")
    assert result.exit_code == 0, result.output
    assert "sent again" not in result.output
    assert "embedded worker runs the 1 waiting jobs when it next starts" in result.output
    assert not internals.embedded_worker(app).running
    with app.app_context():
        assert reload_job(job_id).status is JobStatus.WAITING


def test_sweep_in_embedded_mode_puts_a_lost_job_back_to_wait(
    make_app: AppFactory, internals: Internals
) -> None:
    """With no broker, sweep puts a lost job back to waiting, for the web process to run."""
    app = make_app(CELERY={}, ASYNC_REQUEST_RETRY=1)
    with app.app_context():
        job = add_job(status=JobStatus.PROCESSING)
        job.attempts = 1
        job.lease_expires_at = utcnow() - timedelta(minutes=1)
        current_db().session.commit()
        job_id = job.id
    result = run(app, "sweep")
    assert result.exit_code == 0, result.output
    assert "1 jobs put back to wait, 0 failed" in result.output
    assert not internals.embedded_worker(app).running
    with app.app_context():
        assert reload_job(job_id).status is JobStatus.WAITING


def test_retry_in_embedded_mode_says_the_web_process_runs_it(
    make_app: AppFactory, internals: Internals
) -> None:
    """With no broker, retry sends nothing and says the web process's worker runs the job."""
    app = make_app(CELERY={})
    with app.app_context():
        job_id = add_job(status=JobStatus.FAILED, status_code=500, response="boom").id
    result = run(app, "retry", str(job_id))
    assert result.exit_code == 0, result.output
    assert "the web process's embedded worker runs it when it next starts" in result.output
    assert not internals.embedded_worker(app).running
    with app.app_context():
        assert reload_job(job_id).status is JobStatus.WAITING
