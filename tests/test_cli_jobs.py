"""The commands on jobs, called as commands of their own: list, show, retry and stats."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import click
import pytest
import sqlalchemy as sa
from flask import Flask, current_app

from flask_async_request import Job, JobStatus, results
from flask_async_request.cli import jobs, selection
from flask_async_request.config import format_duration
from flask_async_request.values import utcnow
from tests import workers
from tests.conftest import AppFactory, add_job, current_db


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
    from tests.conftest import Receiver

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
    from tests.conftest import Receiver

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


#: The bytes of ReturnChunks(3, 1000): three chunks of 1000 bytes, each of its index.
STORED = b"".join(bytes([i]) * 1000 for i in range(3))


def _stored_job(app: Flask, monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> Job:
    monkeypatch.setattr(results, "CHUNK_SIZE", 1000)
    with app.app_context():
        job = Job.create_and_enqueue(workers.ReturnChunks, 3, 1000, **kwargs)
        assert job.result_size == len(STORED)
        return job


def _fields(output: str) -> dict[str, str]:
    """show's lines as {name: first line of its value}."""
    found = {}
    for line in output.splitlines():
        if line and not line.startswith(" "):
            name, _, value = line.partition("  ")
            found[name.strip()] = value.strip()
    return found


def test_show_prints_a_stored_results_size_checksum_and_link(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reply in the result store: its size, SHA-256, content type and a signed link's path."""
    app = make_app()
    job = _stored_job(app, monkeypatch)
    output = _invoke(app, jobs.show_command, str(job.id)).output
    fields = _fields(output)
    assert fields["response"] == "(in the result store)"
    assert fields["content type"] == "application/octet-stream"
    assert fields["result size"] == "2.9 KiB (3,000 bytes)"
    assert fields["result sha256"] == hashlib.sha256(STORED).hexdigest()
    # No SERVER_NAME and no --base-url: the link's path, on the app's own origin.
    assert fields["download"].startswith("/async_request/download/")
    assert "(a signed link, valid for 5m00s)" in output
    assert job.token not in output
    assert app.test_client().get(fields["download"]).data == STORED


def test_show_links_on_the_base_url_or_server_name(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--base-url puts the link on that origin; SERVER_NAME does when it is not given."""
    app = make_app(SERVER_NAME="files.example")
    job = _stored_job(app, monkeypatch)
    given = _invoke(app, jobs.show_command, str(job.id), "--base-url", "https://app.example/")
    assert _fields(given.output)["download"].startswith(
        "https://app.example/async_request/download/"
    )
    configured = _fields(_invoke(app, jobs.show_command, str(job.id)).output)["download"]
    assert configured.startswith("http://files.example/async_request/download/")


def test_show_refuses_a_base_url_that_is_not_one(make_app: AppFactory) -> None:
    """--base-url must be an http(s) origin: a usage error, no traceback."""
    app = make_app()
    job_id = _job(app)
    result = _invoke(app, jobs.show_command, str(job_id), "--base-url", "app.example")
    assert result.exit_code == 2
    assert "is not a base url" in result.output


def test_show_json_has_the_stored_result_and_its_link(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """show --json: result_size, result_sha256, headers and download_url."""
    app = make_app()
    job = _stored_job(app, monkeypatch)
    record = json.loads(_invoke(app, jobs.show_command, str(job.id), "--json").output)
    assert record["result_size"] == len(STORED)
    assert record["result_sha256"] == hashlib.sha256(STORED).hexdigest()
    assert record["headers"] == [["Link", '<https://a.test/>; rel="x"']]
    assert record["download_url"].startswith("/async_request/download/")
    text = json.loads(_invoke(app, jobs.show_command, str(_job(app)), "--json").output)
    assert (text["result_size"], text["download_url"]) == (None, None)


def test_show_prints_kept_headers_and_no_link_for_a_text_reply(make_app: AppFactory) -> None:
    """A reply kept in the row: its headers, and no size or link."""
    app = make_app()
    with app.app_context():
        job = add_job(status=JobStatus.PROCESSED, status_code=200, response="a,b")
        job.headers = '[["Content-Disposition", "attachment; filename=rows.csv"]]'
        current_db().session.commit()
        job_id = job.id
    fields = _fields(_invoke(app, jobs.show_command, str(job_id)).output)
    assert fields["response"] == "a,b"
    assert fields["header Content-Disposition"] == "attachment; filename=rows.csv"
    assert "download" not in fields and "result size" not in fields


def test_an_owned_jobs_link_says_whom_it_serves(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job bound to an owner: the link is said to work for that owner only."""
    app = make_app()
    job = _stored_job(app, monkeypatch)
    with app.app_context():
        current_db().session.execute(sa.update(Job).where(Job.id == job.id).values(owner="alice"))
        current_db().session.commit()
    output = _invoke(app, jobs.show_command, str(job.id)).output
    assert "(a signed link, valid for 5m00s, only for alice)" in output
