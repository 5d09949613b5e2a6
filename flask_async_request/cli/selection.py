"""The commands that act on jobs given by id or by a selection: ``retry`` and ``cancel``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import timedelta
from typing import Any, TypeVar

import click
from flask.cli import with_appcontext

from .. import bulk, maintenance
from ..config import format_duration
from ..models import JobStatus
from ..reading import JobFilter
from ..state import get_state
from .options import DURATION, JSON_OPTION, STATUS, echo_json, errors_as_messages

F = TypeVar("F", bound=Callable[..., Any])


def selection_options(f: F) -> F:
    """The options that select jobs: by status, worker, owner and age, at most ``--limit``."""
    decorators = [
        click.option(
            "--status", "statuses", type=STATUS, multiple=True, help="Only these statuses."
        ),
        click.option("--worker", help="Only this worker's jobs (its dotted path)."),
        click.option("--owner", help="Only the jobs of this owner."),
        click.option("--older-than", type=DURATION, help="Only jobs created before this age ago."),
        click.option("--newer-than", type=DURATION, help="Only jobs created within this age."),
    ]
    for decorate in reversed(decorators):
        f = decorate(f)
    return f


def _filter(
    statuses: tuple[str, ...],
    worker: str | None,
    owner: str | None,
    older_than: timedelta | None,
    newer_than: timedelta | None,
) -> JobFilter:
    return JobFilter(
        tuple(JobStatus(s.lower()) for s in statuses),
        worker=worker,
        older_than=older_than,
        newer_than=newer_than,
        owner=owner,
    )


def _bulk_command(action: str, run: Callable[[list[int]], bulk.BulkResult]) -> Callable[[F], F]:
    """The body shared by ``retry`` and ``cancel``: ids or a selection, confirmed, reported."""

    def decorate(f: F) -> F:
        @functools.wraps(f)
        def command(
            job_ids: tuple[int, ...],
            limit: int,
            yes: bool,
            as_json: bool,
            **selecting: Any,
        ) -> None:
            filters = _filter(**selecting)
            if job_ids and not filters.empty:
                raise click.UsageError("Give job ids or a selection (--status, ...), not both.")
            ids = list(job_ids)
            if not ids:
                ids = bulk.selected(action, filters, limit)
                if not ids:
                    if as_json:
                        echo_json(bulk.BulkResult(action).as_json())
                    else:
                        click.echo("No jobs match the selection.")
                    return
                if not yes:
                    if as_json:
                        raise click.UsageError(
                            "A selection with --json needs --yes: nothing can be asked."
                        )
                    shown = ", ".join(map(str, ids[:10])) + (", ..." if len(ids) > 10 else "")
                    click.confirm(f"{action.capitalize()} {len(ids)} jobs ({shown})?", abort=True)
            result = run(ids)
            if as_json:
                echo_json(result.as_json())
            else:
                _report(result)
            # Jobs named by id that could not be acted on are an error; a selection's
            # jobs that changed since it was read are not.
            if job_ids and result.skipped:
                if len(job_ids) == 1 and not as_json:
                    raise click.ClickException(next(iter(result.skipped.values())))
                raise SystemExit(1)

        return command  # type: ignore[return-value]

    return decorate


def _report(result: bulk.BulkResult) -> None:
    said = {"retry": "is waiting to run again", "cancel": "is cancelled"}[result.action]
    for job_id in result.done:
        unsent = " (the broker refused its message; the sweeper sends it)"
        click.echo(f"Job {job_id} {said}{unsent if job_id in result.unsent else ''}.")
    if len(result.skipped) and len(result.done) + len(result.skipped) > 1:
        for job_id, why in result.skipped.items():
            click.echo(f"Skipped job {job_id}: {why}", err=True)
    if result.action == "retry" and result.done and not maintenance.sends_messages():
        timeout = format_duration(get_state().settings.waiting_timeout)
        click.echo(
            "No broker is configured, so no message was sent: the web process's embedded"
            " worker runs it when it next starts, or at its sweeps once it has waited"
            f" {timeout} (ASYNC_REQUEST_WAITING_TIMEOUT)."
        )


_IDS = click.argument("job_ids", type=int, nargs=-1)
_LIMIT = click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=bulk.DEFAULT_LIMIT,
    show_default=True,
    help="The most jobs a selection takes, newest first.",
)
_YES = click.option("--yes", "-y", is_flag=True, help="Act on a selection without asking.")


@click.command("retry")
@with_appcontext
@_IDS
@selection_options
@_LIMIT
@_YES
@JSON_OPTION
@errors_as_messages
@_bulk_command("retry", bulk.retry)
def retry_command(**options: Any) -> None:
    """Run failed jobs again: those named by id, or a selection (--status failed --worker ...).

    A selection takes the failed jobs that match, newest first, and asks before
    it acts (--yes does not ask).
    """


@click.command("cancel")
@with_appcontext
@_IDS
@selection_options
@_LIMIT
@_YES
@JSON_OPTION
@errors_as_messages
@_bulk_command("cancel", bulk.cancel)
def cancel_command(**options: Any) -> None:
    """Cancel waiting or running jobs: those named by id, or a selection (--worker ...).

    A selection takes the waiting and running jobs that match, newest first,
    and asks before it acts (--yes does not ask).
    """
