"""The commands that read jobs: ``list``, ``show`` and ``stats``; and ``redeliver``."""

from __future__ import annotations

import json
import urllib.parse
from datetime import datetime, timedelta
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from .. import callbacks, deliveries, maintenance, reading
from ..access import link_url
from ..config import format_duration
from ..links import LinkClaims
from ..models import Job, JobStatus
from ..payloads import decode_headers
from ..state import get_state
from ..values import as_utc, finite, format_size, iso_utc, utcnow
from .options import DURATION, JSON_OPTION, STATUS, echo_json, errors_as_messages, table


def _age(moment: datetime | None, now: datetime) -> str:
    if moment is None:
        return "-"
    return format_duration(now - as_utc(moment))


def _or_dash(value: str | None) -> str:
    return "-" if value is None else value


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


def _job_record(job: Job, base_url: str | None = None) -> dict[str, Any]:
    """What ``show --json`` prints of a job: all it stores but the idempotency hash.

    A processed reply in the result store adds ``download_url``, a signed link.
    """
    return {
        **_job_summary(job),
        "params": job.params,
        "response": job.response,
        "content_type": job.content_type,
        "headers": [list(pair) for pair in decode_headers(job.headers)],
        "result_size": job.result_size,
        "result_sha256": job.result_sha256,
        "download_url": download_link(job, base_url),
        "progress_message": job.progress_message,
        "callback_url": job.callback_url,
        "callback_status": job.callback_status,
        "traceback": job.traceback,
        "callback_deliveries": [d.as_json() for d in deliveries.decode(job.callback_deliveries)],
        "due_at": iso_utc(job.due_at),
        "updated_at": iso_utc(job.updated_at),
        "lease_expires_at": iso_utc(job.lease_expires_at),
    }


@click.command("list")
@with_appcontext
@click.option("--status", "statuses", type=STATUS, multiple=True, help="Only these statuses.")
@click.option("--older-than", type=DURATION, help="Only jobs created before this age ago.")
@click.option("--newer-than", type=DURATION, help="Only jobs created within this age.")
@click.option("--worker", help="Only this worker's jobs (its dotted path).")
@click.option("--owner", help="Only the jobs of this owner.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True)
@JSON_OPTION
@errors_as_messages
def list_command(
    statuses: tuple[str, ...],
    older_than: timedelta | None,
    newer_than: timedelta | None,
    worker: str | None,
    owner: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """List jobs, newest first."""
    found = reading.list_jobs(
        [JobStatus(s.lower()) for s in statuses],
        older_than,
        newer_than,
        limit,
        worker=worker,
        owner=owner,
    )
    if as_json:
        echo_json([_job_summary(job) for job in found])
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
    click.echo(table(rows))


def download_link(job: Job, base_url: str | None = None) -> str | None:
    """A signed download link to ``job``'s reply in the result store; ``None`` if it has none.

    The link is on ``base_url`` (the app's origin, with the path it is mounted
    at, if any), else ``SERVER_NAME``'s; with neither, it is the link's path,
    which the app's own origin completes. It lasts
    ``ASYNC_REQUEST_LINK_EXPIRATION`` and carries no token.
    """
    if job.status is not JobStatus.PROCESSED or job.result_sha256 is None:
        return None
    claims = LinkClaims(job.id, job.uid, job.result_sha256, job.owner)
    if base_url is None and current_app.config.get("SERVER_NAME"):
        return link_url(claims)
    # A command has no request to take an origin from: the link's path, made in
    # a request of its own, goes on the origin given, or stands alone.
    with current_app.test_request_context():
        path = urllib.parse.urlsplit(link_url(claims)).path
    return path if base_url is None else base_url.rstrip("/") + path


def _base_url(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise click.BadParameter(
            f"{value!r} is not a base url; expected one such as https://app.example.", ctx, param
        )
    return value


def _result_fields(job: Job, base_url: str | None) -> list[tuple[str, str]]:
    """``show``'s lines on a reply: its kept headers and, in the result store, size and link."""
    fields = [("content type", job.content_type or "-")]
    fields += [(f"header {name}", value) for name, value in decode_headers(job.headers)]
    if job.result_size is None or job.result_sha256 is None:
        return fields
    fields.append(("result size", f"{format_size(job.result_size)} ({job.result_size:,} bytes)"))
    fields.append(("result sha256", job.result_sha256))
    link = download_link(job, base_url)
    if link is not None:
        lifetime = format_duration(get_state().settings.link_expiration)
        bound = f", only for {job.owner}" if job.owner else ""
        fields.append(("download", f"{link}\n(a signed link, valid for {lifetime}{bound})"))
    return fields


@click.command("show")
@with_appcontext
@click.argument("job_id", type=int)
@click.option(
    "--base-url",
    callback=_base_url,
    help="The app's origin, for the download link (default: SERVER_NAME, else the path alone).",
)
@JSON_OPTION
@errors_as_messages
def show_command(job_id: int, base_url: str | None, as_json: bool) -> None:
    """Show one job: worker, params, reply and times; a stored result's size and link."""
    job = reading.load_job(job_id)
    if as_json:
        echo_json(_job_record(job, base_url))
        return
    stored = job.result_size is not None
    fields = [
        ("id", str(job.id)),
        ("uid", job.uid),
        ("status", job.status.value),
        ("worker", job.worker),
        ("params", json.dumps(job.params, indent=2)),
        ("attempts", str(job.attempts)),
        ("status code", "-" if job.status_code is None else str(job.status_code)),
        ("response", "(in the result store)" if stored else _or_dash(job.response)),
        *_result_fields(job, base_url),
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
    if job.traceback:
        click.echo()
        click.echo(job.traceback.rstrip("\n"))
    log = deliveries.decode(job.callback_deliveries)
    if log:
        click.echo()
        click.echo(delivery_table(log))


def delivery_table(log: list[deliveries.Delivery]) -> str:
    """The callback's deliveries, oldest first, as ``show`` prints them."""
    rows = [["DELIVERED AT", "OUTCOME", "HOST", "ANSWER", "TOOK", "DELIVERY"]]
    for entry in log:
        answer = str(entry.status_code) if entry.status_code is not None else entry.error or "-"
        which = f"{entry.delivery} (redelivery)" if entry.redelivery else str(entry.delivery)
        took = f"{entry.duration * 1000:.0f} ms"
        rows.append([iso_utc(entry.at) or "-", entry.outcome, entry.host, answer, took, which])
    return table(rows)


@click.command("redeliver")
@with_appcontext
@click.argument("job_id", type=int)
@JSON_OPTION
@errors_as_messages
def redeliver_command(job_id: int, as_json: bool) -> None:
    """Deliver a finished job's callback again, now, signed afresh with the same webhook-id."""
    entry = callbacks.redeliver(job_id)
    if as_json:
        echo_json(entry.as_json())
    else:
        click.echo(delivery_table([entry]))
    if entry.outcome != deliveries.DELIVERED:
        raise SystemExit(1)


@click.command("stats")
@with_appcontext
@JSON_OPTION
@errors_as_messages
def stats_command(as_json: bool) -> None:
    """Count jobs per status and waiting jobs per queue; say which queues no worker consumes."""
    stats = reading.job_stats()
    unconsumed = maintenance.unconsumed_queues(stats.waiting_by_queue)
    default = get_state().celery.conf.task_default_queue
    by_queue = {queue or default: count for queue, count in stats.waiting_by_queue.items()}
    if as_json:
        age = stats.oldest_waiting_age
        echo_json(
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
    click.echo(table(rows))
    oldest = "-" if stats.oldest_waiting_age is None else format_duration(stats.oldest_waiting_age)
    click.echo(f"oldest waiting job: {oldest}")
    click.echo(f"finished in the last hour: {stats.finished_last_hour}")
    if by_queue:
        click.echo()
        click.echo(table([["QUEUE", "WAITING"]] + [[q, str(n)] for q, n in by_queue.items()]))
    for queue in unconsumed:
        click.echo(
            f"Warning: jobs wait on queue {queue!r} and no running worker consumes it;"
            f" start one with `celery -A <app>:celery_app worker -Q {queue}`.",
            err=True,
        )
