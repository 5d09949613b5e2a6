"""The commands on jobs, called as commands of their own: list, show, retry and stats."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import click
from flask import Flask, current_app

from flask_async_request import JobStatus
from flask_async_request.cli import jobs, selection
from flask_async_request.config import format_duration
from flask_async_request.values import utcnow
from tests.conftest import AppFactory, add_job


def _invoke(app: Flask, command: click.Command, *args: str) -> Any:
    return app.test_cli_runner().invoke(command, list(args))


def _job(app: Flask, **columns: Any) -> int:
    with app.app_context():
        return add_job(**columns).id


def test_an_age_is_a_duration_or_a_dash() -> None:
    """The time since a moment, as durations are written; no moment is ``-``."""
    now = utcnow()
    assert jobs._age(now - timedelta(hours=2), now) == format_duration(timedelta(hours=2))
    assert jobs._age(None, now) == "-"


def test_a_summary_has_every_key_and_a_record_adds_the_rest(app: Flask) -> None:
    """list's keys are always there, times in ISO 8601 UTC; show's add the stored columns."""
    job = add_job(status=JobStatus.PROCESSED, status_code=200, response="ok", finished_at=utcnow())
    summary = jobs._job_summary(job)
    assert list(summary) == [
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
    ]
    assert (summary["status"], summary["started_at"]) == ("processed", None)
    assert summary["finished_at"].endswith("Z") or summary["finished_at"].endswith("+00:00")
    record = jobs._job_record(job)
    assert record.items() >= summary.items()
    assert (record["response"], record["params"]) == ("ok", {"args": [], "kwargs": {}})
    assert "idempotency_key" not in record


def test_list_prints_one_row_per_job_newest_first(make_app: AppFactory) -> None:
    """A header, then the jobs by id descending, with status, code and worker."""
    app = make_app()
    first = _job(app)
    second = _job(app, status=JobStatus.FAILED, status_code=500)
    lines = _invoke(app, jobs.list_command).output.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "CODE", "WORKER", "AGE", "TRIES"]
    assert [line.split()[:3] for line in lines[1:]] == [
        [str(second), "failed", "500"],
        [str(first), "waiting", "-"],
    ]


def test_list_json_with_a_status_filter(make_app: AppFactory) -> None:
    """--json prints the summaries of the jobs of the status asked for only."""
    app = make_app()
    _job(app)
    failed = _job(app, status=JobStatus.FAILED)
    listed = json.loads(_invoke(app, jobs.list_command, "--status", "FAILED", "--json").output)
    assert [job["id"] for job in listed] == [failed]


def test_list_of_nothing_says_so(make_app: AppFactory) -> None:
    """No job: one line, not an empty table."""
    assert _invoke(make_app(), jobs.list_command).output == "No jobs.\n"


def test_show_prints_each_field_with_multiline_values_indented(make_app: AppFactory) -> None:
    """Names in a column, a value's later lines under its first."""
    app = make_app()
    job_id = _job(app, args=[1, 2])
    output = _invoke(app, jobs.show_command, str(job_id)).output
    lines = output.splitlines()
    assert lines[0].split() == ["id", str(job_id)]
    params = next(i for i, line in enumerate(lines) if line.startswith("params"))
    assert lines[params].endswith("{")
    assert lines[params + 1].startswith(" " * len("callback status"))


def test_show_of_a_missing_job_is_an_error_line(make_app: AppFactory) -> None:
    """No traceback: the library's sentence, exit code 1."""
    result = _invoke(make_app(), jobs.show_command, "404")
    assert result.exit_code == 1
    assert result.output.startswith("Error: ")


def test_retry_of_a_job_that_did_not_fail_is_refused(make_app: AppFactory) -> None:
    """Only failed jobs are retried; the job is left as it was."""
    app = make_app()
    job_id = _job(app, status=JobStatus.PROCESSED)
    result = _invoke(app, selection.retry_command, str(job_id))
    assert result.exit_code == 1
    assert "only failed jobs can be retried" in result.output


def test_stats_json_counts_every_status_and_the_waiting_per_queue(make_app: AppFactory) -> None:
    """Every status is a key; waiting jobs are counted on the default queue's name."""
    app = make_app()
    _job(app)
    _job(app, status=JobStatus.FAILED)
    stats = json.loads(_invoke(app, jobs.stats_command, "--json").output)
    assert stats["counts"] == {
        "waiting": 1,
        "processing": 0,
        "processed": 0,
        "failed": 1,
        "cancelled": 0,
    }
    with app.app_context():
        default = current_app.extensions["celery"].conf.task_default_queue
    assert stats["waiting_by_queue"] == {default: 1}
    assert stats["oldest_waiting_age_seconds"] >= 0


def _delivered(app: Flask, url: str) -> int:
    """A processed job calling back ``url``, delivered once."""
    from flask_async_request.callbacks import deliver

    with app.app_context():
        job = add_job(status=JobStatus.PROCESSED, status_code=200, response="ok")
        job.callback_url = url
        current_app.extensions["sqlalchemy"].session.commit()
        deliver(job.id)
        return job.id


def test_show_prints_the_callback_deliveries(make_app: AppFactory) -> None:
    """show lists each delivery with its host and answer; --json has them as objects."""
    from tests.test_idempotency_webhooks import Receiver

    app = make_app()
    receiver = Receiver()
    try:
        job_id = _delivered(app, receiver.url + "?secret=1")
    finally:
        receiver.server.shutdown()
    output = _invoke(app, jobs.show_command, str(job_id)).output
    assert "DELIVERED AT" in output and "127.0.0.1" in output and "secret=1" in output
    [row] = [line for line in output.splitlines() if line.startswith("20")]
    assert "delivered" in row and "200" in row and "secret" not in row
    record = json.loads(_invoke(app, jobs.show_command, str(job_id), "--json").output)
    [entry] = record["callback_deliveries"]
    assert (entry["outcome"], entry["host"], entry["status_code"]) == (
        "delivered",
        "127.0.0.1",
        200,
    )


def test_redeliver_posts_again_and_prints_the_entry(make_app: AppFactory) -> None:
    """redeliver delivers once more and prints the delivery; a failed one exits 1."""
    from tests.test_idempotency_webhooks import Receiver

    app = make_app()
    receiver = Receiver()
    try:
        job_id = _delivered(app, receiver.url)
        result = _invoke(app, jobs.redeliver_command, str(job_id), "--json")
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["redelivery"] is True
        assert len(receiver.calls) == 2
        receiver.status = 500
        failed = _invoke(app, jobs.redeliver_command, str(job_id))
    finally:
        receiver.server.shutdown()
    assert failed.exit_code == 1 and "failed" in failed.output and "500" in failed.output


def test_redeliver_of_what_has_no_callback_is_an_error_line(make_app: AppFactory) -> None:
    """No such job, or a job without a callback url: Error: ..., exit code 1."""
    app = make_app()
    missing = _invoke(app, jobs.redeliver_command, "424242")
    assert missing.exit_code == 1 and "Error: There is no job 424242" in missing.output
    plain = _invoke(app, jobs.redeliver_command, str(_job(app, status=JobStatus.PROCESSED)))
    assert plain.exit_code == 1 and "no callback url" in plain.output
