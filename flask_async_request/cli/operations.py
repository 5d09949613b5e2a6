"""The commands that operate the library: ``init``, ``purge``, ``sweep``, ``worker``, ``beat``."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click
from flask.cli import with_appcontext

from .. import maintenance, reading
from ..config import format_duration
from ..models import JobStatus
from ..state import current_flask_app, get_state
from .options import DURATION, STATUS, errors_as_messages


@click.command("init")
@with_appcontext
@click.option(
    "--config-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("async_request_settings.py"),
    show_default=True,
    help="Where to write the commented settings snippet.",
)
@click.option("--force", is_flag=True, help="Overwrite the settings snippet if it exists.")
@errors_as_messages
def init_command(config_file: Path, force: bool) -> None:
    """Add the jobs table to the app's migrations and write a settings snippet.

    Writes an Alembic revision that creates the async_request_jobs table into
    the Flask-Migrate versions folder (running `flask db init` first when there
    is none), then `flask db upgrade` creates the table. Safe to run again: a
    revision that already creates the table is kept, and the snippet is only
    rewritten with --force.
    """
    # Imported here for its cost: Alembic is only needed by this command.
    from ..migrations import init_app_files

    result = init_app_files(current_flask_app(), config_file, force=force)
    if result.migrations_created:
        click.echo("Created the migrations folder (flask db init).")
    if result.revision_written:
        click.echo(f"Wrote the jobs table revision: {result.revision}")
        click.echo("Next: run `flask db upgrade` to create the table.")
    else:
        click.echo(f"The jobs table revision exists already, left as is: {result.revision}")
    for step, path in result.steps:
        click.echo(f"Wrote {step.wrote}: {path}")
        click.echo(f"Next: run `flask db upgrade` to {step.upgrade}.")
    if result.config_written:
        click.echo(f"Wrote the settings snippet: {result.config}")
    else:
        click.echo(
            f"The settings snippet exists, left as is (--force rewrites it): {result.config}"
        )


@click.command("purge")
@with_appcontext
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
@errors_as_messages
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


@click.command("sweep")
@with_appcontext
@errors_as_messages
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


@click.command("worker", context_settings=_PASS_THROUGH)
@with_appcontext
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


@click.command("beat", context_settings=_PASS_THROUGH)
@with_appcontext
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def beat_command(celery_args: tuple[str, ...]) -> None:
    """Start Celery beat for this app (runs the periodic purge); options go to `celery beat`.

    For example: flask async-request beat --schedule /var/run/beat-schedule
    """
    celery_app = _broker_required("beat")
    code = celery_app.start(["beat", *celery_args])
    if code:
        raise SystemExit(code)
