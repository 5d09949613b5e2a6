"""retry and cancel of jobs named by id or selected (status, worker, owner, age), list's filters."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask

from flask_async_request import Job, JobStatus
from flask_async_request.values import utcnow
from tests.conftest import AppFactory, add_job, current_db, reload_job


def run(app: Flask, *args: str, answer: str | None = None) -> Any:
    return app.test_cli_runner().invoke(args=["async-request", *args], input=answer)


def _job(app: Flask, status: JobStatus, **columns: Any) -> int:
    with app.app_context():
        job = add_job(columns.pop("worker", "tests.workers:Echo"), status)
        for name, value in columns.items():
            setattr(job, name, value)
        current_db().session.commit()
        return job.id


def _status(app: Flask, job_id: int) -> JobStatus:
    with app.app_context():
        return reload_job(job_id).status


@pytest.fixture
def jobs(make_app: AppFactory) -> tuple[Flask, dict[str, int]]:
    """Failed, waiting and processed jobs of two workers and owners; one failed job is old."""
    app = make_app(CELERY={"task_always_eager": False, "broker_url": "memory://"})
    ids = {
        "failed_a": _job(app, JobStatus.FAILED, worker="tests.workers:Boom", owner="alice"),
        "failed_b": _job(app, JobStatus.FAILED, worker="tests.workers:Echo", owner="bob"),
        "old_failed": _job(
            app,
            JobStatus.FAILED,
            worker="tests.workers:Boom",
            owner="alice",
            created_at=utcnow() - timedelta(days=3),
        ),
        "waiting_a": _job(app, JobStatus.WAITING, worker="tests.workers:Boom", owner="alice"),
        "waiting_b": _job(app, JobStatus.WAITING, worker="tests.workers:Echo", owner="bob"),
        "done": _job(app, JobStatus.PROCESSED, worker="tests.workers:Boom", owner="alice"),
    }
    return app, ids


def test_retry_of_a_selection_takes_only_the_matching_failed_jobs(
    jobs: tuple[Flask, dict[str, int]],
) -> None:
    """--worker and --older-than narrow the failed jobs; --yes acts without asking."""
    app, ids = jobs
    result = run(app, "retry", "--worker", "tests.workers:Boom", "--older-than", "1d", "--yes")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"Job {ids['old_failed']} is waiting to run again."
    assert _status(app, ids["old_failed"]) is JobStatus.WAITING
    assert _status(app, ids["failed_a"]) is JobStatus.FAILED


def test_retry_asks_before_it_acts_on_a_selection(jobs: tuple[Flask, dict[str, int]]) -> None:
    """Without --yes a selection is confirmed first; no stops it, and nothing changes."""
    app, ids = jobs
    refused = run(app, "retry", "--status", "failed", answer="n\n")
    assert refused.exit_code == 1 and "Retry 3 jobs" in refused.output
    assert _status(app, ids["failed_a"]) is JobStatus.FAILED
    accepted = run(app, "retry", "--owner", "alice", answer="y\n")
    assert accepted.exit_code == 0, accepted.output
    assert _status(app, ids["failed_a"]) is JobStatus.WAITING
    assert _status(app, ids["failed_b"]) is JobStatus.FAILED


def test_retry_json_lists_what_was_done(jobs: tuple[Flask, dict[str, int]]) -> None:
    """--json prints the ids acted on and those skipped, with why."""
    app, ids = jobs
    result = run(app, "retry", "--owner", "bob", "--json", "--yes")
    assert json.loads(result.output) == {
        "action": "retry",
        "done": [ids["failed_b"]],
        "skipped": [],
        "unsent": [],
    }
    named = run(app, "retry", str(ids["failed_a"]), str(ids["done"]), "--json")
    assert named.exit_code == 1
    record = json.loads(named.output)
    assert record["done"] == [ids["failed_a"]]
    [skipped] = record["skipped"]
    assert skipped["id"] == ids["done"] and "only failed jobs" in skipped["reason"]


def test_cancel_of_a_selection_and_by_id(jobs: tuple[Flask, dict[str, int]]) -> None:
    """cancel takes the waiting and running jobs selected, or those named."""
    app, ids = jobs
    result = run(app, "cancel", "--owner", "bob", "--yes")
    assert result.output.strip() == f"Job {ids['waiting_b']} is cancelled."
    assert _status(app, ids["waiting_b"]) is JobStatus.CANCELLED
    assert _status(app, ids["waiting_a"]) is JobStatus.WAITING
    by_id = run(app, "cancel", str(ids["waiting_a"]))
    assert by_id.exit_code == 0 and _status(app, ids["waiting_a"]) is JobStatus.CANCELLED
    finished = run(app, "cancel", str(ids["done"]))
    assert finished.exit_code == 1
    assert finished.output.startswith("Error: ") and "cannot be cancelled" in finished.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["retry"], "needs a selection"),
        (["cancel"], "needs a selection"),
        (["retry", "--status", "waiting"], "Only failed jobs can be retried"),
        (["cancel", "--status", "processed"], "Only waiting or processing jobs"),
        (["retry", "1", "--owner", "x"], "not both"),
        (["retry", "--status", "failed", "--json"], "needs --yes"),
        (["retry", "--older-than", "soon"], "Invalid value for '--older-than'"),
        (["cancel", "--status", "lost"], "Invalid value for '--status'"),
    ],
)
def test_bad_selections_are_explained(
    jobs: tuple[Flask, dict[str, int]], args: list[str], message: str
) -> None:
    """Nothing selected, a status the action does not take, ids and filters: an error line."""
    app, ids = jobs
    result = run(app, *args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert _status(app, ids["failed_a"]) is JobStatus.FAILED


def test_no_match_says_so(jobs: tuple[Flask, dict[str, int]]) -> None:
    """A selection of nothing acts on nothing and says so; --json prints an empty result."""
    app, _ = jobs
    assert run(app, "retry", "--owner", "nobody").output.strip() == "No jobs match the selection."
    empty = json.loads(run(app, "cancel", "--owner", "nobody", "--json").output)
    assert empty == {"action": "cancel", "done": [], "skipped": [], "unsent": []}


def test_list_filters_by_worker_and_owner(jobs: tuple[Flask, dict[str, int]]) -> None:
    """list --worker --owner shows only those jobs, in JSON too."""
    app, ids = jobs
    result = run(app, "list", "--worker", "tests.workers:Boom", "--owner", "alice", "--json")
    listed = json.loads(result.output)
    assert [job["id"] for job in listed] == sorted(
        [ids["failed_a"], ids["old_failed"], ids["waiting_a"], ids["done"]], reverse=True
    )
    assert {job["owner"] for job in listed} == {"alice"}
    assert "No jobs." in run(app, "list", "--owner", "nobody").output


def test_jobs_are_acted_on_through_their_own_transition(
    jobs: tuple[Flask, dict[str, int]],
) -> None:
    """A bulk cancel ends each job as a single cancel does: status code 499."""
    app, ids = jobs
    run(app, "cancel", "--worker", "tests.workers:Boom", "--yes")
    with app.app_context():
        job = current_db().session.get(Job, ids["waiting_a"])
        assert job is not None and (job.status, job.status_code) == (JobStatus.CANCELLED, 499)
