"""``flask async-request ...``: thin click wrappers over the plain functions of the library."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import click
import sqlalchemy.exc
from flask.cli import AppGroup

from . import maintenance, reading
from .config import format_duration, parse_duration
from .exceptions import AsyncRequestError
from .models import Job, JobStatus, as_utc, finite, iso_utc, utcnow
from .state import current_flask_app, get_state

F = TypeVar("F", bound=Callable[..., Any])

cli = AppGroup("async-request", help="Manage flask-async-request jobs, workers and migrations.")


def _errors_as_messages(f: F) -> F:
    """Turn the library's and the database's errors into ``Error: ...`` lines."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        # LookupError: SQLAlchemy's word for a status in the table that is not a JobStatus.
        except (AsyncRequestError, ValueError, LookupError) as e:
            raise click.ClickException(str(e)) from e
        except sqlalchemy.exc.SQLAlchemyError as e:
            detail = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
            raise click.ClickException(
                f"The database refused the query ({detail}). Is it reachable, and is the jobs"
                " table created (`flask db upgrade`, or `flask async-request init` first)?"
            ) from e

    return wrapper  # type: ignore[return-value]


class _Duration(click.ParamType):  # type: ignore[type-arg,unused-ignore]
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, timedelta):
            return value
        try:
            return parse_duration(str(value))
        except ValueError as e:
            self.fail(str(e), param, ctx)


DURATION = _Duration()
STATUS = click.Choice([s.value for s in JobStatus], case_sensitive=False)


def _age(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    return format_duration(now - as_utc(moment))


#: ``--json`` on the read commands: stable keys, times in ISO 8601 UTC, durations in seconds.
_JSON_OPTION = click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print JSON instead: every key always present, times in ISO 8601 UTC.",
)


def _job_summary(job: Job) -> dict[str, Any]:
    """What ``list --json`` prints of each job."""
    return {
        "id": job.id,
        "uid": job.uid,
        "status": job.status.value,
        "worker": job.worker,
        "status_code": job.status_code,
        "attempts": job.attempts,
        "owner": job.owner,
        "progress": finite(job.progress),
        "created_at": iso_utc(job.created_at),
        "started_at": iso_utc(job.started_at),
        "finished_at": iso_utc(job.finished_at),
    }


def _job_record(job: Job) -> dict[str, Any]:
    """What ``show --json`` prints of a job: all it stores but the idempotency hash."""
    return {
        **_job_summary(job),
        "params": job.params,
        "response": job.response,
        "content_type": job.content_type,
        "progress_message": job.progress_message,
        "callback_url": job.callback_url,
        "callback_status": job.callback_status,
        "due_at": iso_utc(job.due_at),
        "updated_at": iso_utc(job.updated_at),
        "lease_expires_at": iso_utc(job.lease_expires_at),
    }


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, ensure_ascii=False))


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


@cli.command("init")
@click.option(
    "--config-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("async_request_settings.py"),
    show_default=True,
    help="Where to write the commented settings snippet.",
)
@click.option("--force", is_flag=True, help="Overwrite the settings snippet if it exists.")
@_errors_as_messages
def init_command(config_file: Path, force: bool) -> None:
    """Add the jobs table to the app's migrations and write a settings snippet.

    Writes an Alembic revision that creates the async_request_jobs table into
    the Flask-Migrate versions folder (running `flask db init` first when there
    is none), then `flask db upgrade` creates the table. Safe to run again: a
    revision that already creates the table is kept, and the snippet is only
    rewritten with --force.
    """
    # Imported here for its cost: Alembic is only needed by this command.
    from .migrations import init_app_files

    result = init_app_files(current_flask_app(), config_file, force=force)
    if result.migrations_created:
        click.echo("Created the migrations folder (flask db init).")
    if result.revision_written:
        click.echo(f"Wrote the jobs table revision: {result.revision}")
        click.echo("Next: run `flask db upgrade` to create the table.")
    else:
        click.echo(f"The jobs table revision exists already, left as is: {result.revision}")
    if result.results_revision is not None:
        click.echo(f"Wrote the result store revision: {result.results_revision}")
        click.echo("Next: run `flask db upgrade` to add the result store.")
    if result.config_written:
        click.echo(f"Wrote the settings snippet: {result.config}")
    else:
        click.echo(
            f"The settings snippet exists, left as is (--force rewrites it): {result.config}"
        )


@cli.command("purge")
@click.option(
    "--older-than",
    type=DURATION,
    default=None,
    help="Delete the jobs older than this, such as 2h or 7d, whatever their worker"
    " [default: each job's retention: its worker's retention or failed_retention, else"
    " ASYNC_REQUEST_JOBS_EXPIRATION or ASYNC_REQUEST_FAILED_JOBS_EXPIRATION].",
)
@click.option(
    "--status",
    "statuses",
    type=STATUS,
    multiple=True,
    help="Statuses to delete; repeat for several [default: processed, failed and cancelled]."
    " Naming waiting or processing deletes unfinished jobs too.",
)
@click.option("--dry-run", is_flag=True, help="Count the jobs that would go; delete nothing.")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=maintenance.PURGE_BATCH_SIZE,
    show_default=True,
    help="Rows deleted per transaction.",
)
@_errors_as_messages
def purge_command(
    older_than: timedelta | None, statuses: tuple[str, ...], dry_run: bool, batch_size: int
) -> None:
    """Delete old jobs, finished ones by default, in short batches."""
    chosen = [JobStatus(s.lower()) for s in statuses] or list(maintenance.FINISHED_STATUSES)
    names = ", ".join(s.value for s in chosen)
    if older_than is None:
        age = "past their retention"

        def count() -> int:
            return maintenance.count_expired(chosen)

        def purge(advance: Callable[[int], None]) -> int:
            return maintenance.purge_expired(chosen, batch_size=batch_size, progress=advance)
    else:
        age = f"older than {format_duration(older_than)}"

        def count() -> int:
            return maintenance.count_purgeable(older_than, chosen)

        def purge(advance: Callable[[int], None]) -> int:
            return maintenance.purge_jobs(
                older_than, chosen, batch_size=batch_size, progress=advance
            )

    total = count()
    if dry_run:
        click.echo(f"Would delete {total} jobs ({names}) {age}.")
        return
    if total == 0:
        click.echo(f"No jobs ({names}) {age}.")
        return
    with click.progressbar(length=total, label=f"Deleting {names} jobs", file=None) as bar:
        last = 0

        def advance(done: int) -> None:
            nonlocal last
            bar.update(done - last)
            last = done

        deleted = purge(advance)
    click.echo(f"Deleted {deleted} jobs ({names}) {age}.")


@cli.command("sweep")
@_errors_as_messages
def sweep_command() -> None:
    """Rescue lost and stuck jobs now (beat does it every ASYNC_REQUEST_SWEEP_INTERVAL).

    Processing jobs whose lease ran out lost their worker: they run again while
    retries remain, else they fail saying so. Waiting jobs not claimed within
    ASYNC_REQUEST_WAITING_TIMEOUT lost their message: it is sent again. With no
    broker configured (embedded mode) nothing is sent: the web process's
    embedded worker runs the waiting jobs.
    """
    result = maintenance.sweep_jobs()
    if result.sent:
        click.echo(
            f"Lost workers: {result.requeued} jobs put back to run, {result.failed} failed."
            f" Waiting jobs sent again: {result.republished}."
        )
        return
    click.echo(f"Lost workers: {result.requeued} jobs put back to wait, {result.failed} failed.")
    click.echo(_left_to_the_web_process(reading.job_stats().counts[JobStatus.WAITING]))


def _left_to_the_web_process(waiting: int) -> str:
    """What happens to waiting jobs in embedded mode, where this command sends nothing."""
    timeout = format_duration(get_state().settings.waiting_timeout)
    return (
        "No broker is configured, so no message was sent: the web process's embedded worker"
        f" runs the {waiting} waiting jobs when it next starts, or at its sweeps once they"
        f" have waited {timeout} (ASYNC_REQUEST_WAITING_TIMEOUT)."
    )


@cli.command("list")
@click.option("--status", "statuses", type=STATUS, multiple=True, help="Only these statuses.")
@click.option("--older-than", type=DURATION, help="Only jobs created before this age ago.")
@click.option("--newer-than", type=DURATION, help="Only jobs created within this age.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@_JSON_OPTION
@_errors_as_messages
def list_command(
    statuses: tuple[str, ...],
    older_than: timedelta | None,
    newer_than: timedelta | None,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    found = reading.list_jobs(
        [JobStatus(s.lower()) for s in statuses], older_than, newer_than, limit
    )
    if as_json:
        _echo_json([_job_summary(job) for job in found])
        return
    if not found:
        click.echo("No jobs.")
        return
    now = utcnow()
    rows = [["ID", "STATUS", "CODE", "WORKER", "AGE", "TRIES"]]
    rows += [
        [
            str(job.id),
            job.status.value,
            "-" if job.status_code is None else str(job.status_code),
            job.worker,
            _age(job.created_at, now),
            str(job.attempts),
        ]
        for job in found
    ]
    click.echo(_table(rows))


@cli.command("show")
@click.argument("job_id", type=int)
@_JSON_OPTION
@_errors_as_messages
def show_command(job_id: int, as_json: bool) -> None:
    """Show one job: worker, params, reply and times."""
    job = reading.load_job(job_id)
    if as_json:
        _echo_json(_job_record(job))
        return
    fields = [
        ("id", str(job.id)),
        ("uid", job.uid),
        ("status", job.status.value),
        ("worker", job.worker),
        ("params", json.dumps(job.params, indent=2)),
        ("attempts", str(job.attempts)),
        ("status code", "-" if job.status_code is None else str(job.status_code)),
        ("response", "-" if job.response is None else job.response),
        ("callback", job.callback_url or "-"),
        ("callback status", job.callback_status or "-"),
    ]
    for name in ("created_at", "updated_at", "started_at", "finished_at"):
        moment = getattr(job, name)
        fields.append((name.replace("_", " "), iso_utc(moment) or "-"))
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        lines = value.splitlines() or [""]
        click.echo(f"{name.ljust(width)}  {lines[0]}")
        for line in lines[1:]:
            click.echo(f"{' ' * width}  {line}")


@cli.command("retry")
@click.argument("job_id", type=int)
@_errors_as_messages
def retry_command(job_id: int) -> None:
    """Run a failed job again."""
    if maintenance.retry_job(job_id):
        click.echo(f"Job {job_id} is waiting to run again.")
        return
    timeout = format_duration(get_state().settings.waiting_timeout)
    click.echo(
        f"Job {job_id} is waiting to run again. No broker is configured, so no message was"
        " sent: the web process's embedded worker runs it when it next starts, or at its"
        f" sweeps once it has waited {timeout} (ASYNC_REQUEST_WAITING_TIMEOUT)."
    )


@cli.command("stats")
@_JSON_OPTION
@_errors_as_messages
def stats_command(as_json: bool) -> None:
    """Count jobs per status and waiting jobs per queue; say which queues no worker consumes."""
    stats = reading.job_stats()
    unconsumed = maintenance.unconsumed_queues(stats.waiting_by_queue)
    default = get_state().celery.conf.task_default_queue
    by_queue = {queue or default: count for queue, count in stats.waiting_by_queue.items()}
    if as_json:
        age = stats.oldest_waiting_age
        _echo_json(
            {
                "counts": {status.value: count for status, count in stats.counts.items()},
                "oldest_waiting_age_seconds": None if age is None else age.total_seconds(),
                "finished_last_hour": stats.finished_last_hour,
                "waiting_by_queue": by_queue,
                "queues_without_workers": unconsumed,
            }
        )
        return
    rows = [["STATUS", "JOBS"]] + [[s.value, str(n)] for s, n in stats.counts.items()]
    click.echo(_table(rows))
    oldest = "-" if stats.oldest_waiting_age is None else format_duration(stats.oldest_waiting_age)
    click.echo(f"oldest waiting job: {oldest}")
    click.echo(f"finished in the last hour: {stats.finished_last_hour}")
    if by_queue:
        click.echo()
        click.echo(_table([["QUEUE", "WAITING"]] + [[q, str(n)] for q, n in by_queue.items()]))
    for queue in unconsumed:
        click.echo(
            f"Warning: jobs wait on queue {queue!r} and no running worker consumes it;"
            f" start one with `celery -A <app>:celery_app worker -Q {queue}`.",
            err=True,
        )


_PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": True}


def _broker_required(command: str) -> Any:
    state = get_state()
    if state.embedded is not None or state.celery.conf.task_always_eager:
        raise click.ClickException(
            f"No broker is configured, so jobs run inside the web process and a separate"
            f" {command} has nothing to consume. Set CELERY = {{'broker_url': ...}} (Redis or"
            " RabbitMQ) in the app config first."
        )
    return state.celery


@cli.command("worker", context_settings=_PASS_THROUGH)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker_command(celery_args: tuple[str, ...]) -> None:
    """Start a Celery worker for this app; other options go to `celery worker`.

    For example: flask async-request worker --concurrency 4 --loglevel INFO
    """
    celery_app = _broker_required("worker")
    queue = get_state().settings.queue
    args = list(celery_args)
    if queue and not any(a in ("-Q", "--queues") or a.startswith("--queues=") for a in args):
        args += ["--queues", queue]
    code = celery_app.start(["worker", *args])
    if code:
        raise SystemExit(code)


@cli.command("beat", context_settings=_PASS_THROUGH)
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat_command(celery_args: tuple[str, ...]) -> None:
    """Start Celery beat for this app (runs the periodic purge); options go to `celery beat`.

    For example: flask async-request beat --schedule /var/run/beat-schedule
    """
    celery_app = _broker_required("beat")
    code = celery_app.start(["beat", *celery_args])
    if code:
        raise SystemExit(code)
