"""Prometheus metrics of the jobs, the polls and the sweeper.

Needs ``pip install flask-async-request[metrics]``. Turned on with
:meth:`~flask_async_request.AsyncRequest.init_metrics`, which serves them at
``/async-request/metrics``. Counters and histograms are kept in every process where
things happen (web processes for submissions and polls, worker processes for
runs), fed by the library's signals. Under gunicorn's or Celery's several
processes, set ``PROMETHEUS_MULTIPROC_DIR`` to a directory they share (empty at
start) before they start, as prometheus-client's multiprocess mode asks: the
endpoint then adds up every process's figures. Two figures that need the table,
the jobs waiting and the age of the oldest, are read when scraped, in one query
on the index of unfinished jobs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Flask, Response, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from . import signals
from .models import JobStatus
from .reading import waiting_now

#: Seconds buckets for run time and queue wait: 10 ms to 1 hour.
BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

CREATED = Counter("async_request_jobs_created", "Jobs stored and published.", ["worker"])
ENDED = Counter(
    "async_request_jobs_ended",
    "Jobs that reached an end state, by status (processed, failed, cancelled).",
    ["status", "worker"],
)
STARTED = Counter("async_request_jobs_started", "Runs claimed by a worker.", ["worker"])
RUN_SECONDS = Histogram(
    "async_request_job_run_seconds",
    "How long runs took, claim to end.",
    ["worker"],
    buckets=BUCKETS,
)
WAIT_SECONDS = Histogram(
    "async_request_job_queue_wait_seconds",
    "How long jobs waited between being due and being claimed.",
    ["worker"],
    buckets=BUCKETS,
)
POLLS = Counter(
    "async_request_polls",
    "Answers of the status endpoint, by kind and status code.",
    ["kind", "code"],
)
SWEPT = Counter(
    "async_request_sweeper_actions", "Jobs the sweeper acted on, by action.", ["action"]
)

DELIVERIES = Counter(
    "async_request_callback_deliveries",
    "Deliveries of job callbacks, by outcome (delivered, failed, refused) and by whether"
    " an operator asked for them.",
    ["outcome", "redelivery"],
)
DELIVERY_SECONDS = Histogram(
    "async_request_callback_delivery_seconds",
    "How long deliveries of job callbacks took, by outcome.",
    ["outcome"],
    buckets=BUCKETS,
)

_STATUS_ENDPOINTS = frozenset({"async_request.job", "async_request.job_url"})

# Runs started in this process, so their end can be timed: job id -> monotonic start.
_running: dict[int, float] = {}


def _worker_path(extra: dict[str, Any]) -> str:
    """The dotted path of the signal's worker class, the metrics' ``worker`` label."""
    return str(extra.get("worker") or "unknown")


def _on_enqueued(sender: Flask, job_id: int, **extra: Any) -> None:
    CREATED.labels(_worker_path(extra)).inc()


def _on_started(sender: Flask, job_id: int, **extra: Any) -> None:
    path = _worker_path(extra)
    STARTED.labels(path).inc()
    if extra.get("waited") is not None:
        WAIT_SECONDS.labels(path).observe(max(float(extra["waited"]), 0.0))
    _running[job_id] = time.monotonic()


def _ended(status: JobStatus) -> Callable[..., None]:
    def on_end(sender: Flask, job_id: int, **extra: Any) -> None:
        path = _worker_path(extra)
        ENDED.labels(status.value, path).inc()
        started = _running.pop(job_id, None)
        if started is not None:
            RUN_SECONDS.labels(path).observe(time.monotonic() - started)

    return on_end


def _on_swept(sender: Flask, **counts: int) -> None:
    for action, count in counts.items():
        if count:
            SWEPT.labels(action).inc(count)


def _on_delivered(sender: Flask, job_id: int, **extra: Any) -> None:
    outcome = str(extra.get("outcome") or "unknown")
    DELIVERIES.labels(outcome, "true" if extra.get("redelivery") else "false").inc()
    if extra.get("duration") is not None:
        DELIVERY_SECONDS.labels(outcome).observe(max(float(extra["duration"]), 0.0))


_RECEIVERS: list[tuple[Any, Callable[..., None]]] = [
    (signals.job_enqueued, _on_enqueued),
    (signals.job_started, _on_started),
    (signals.job_finished, _ended(JobStatus.PROCESSED)),
    (signals.job_failed, _ended(JobStatus.FAILED)),
    (signals.job_cancelled, _ended(JobStatus.CANCELLED)),
    (signals.jobs_swept, _on_swept),
    (signals.callback_delivered, _on_delivered),
]


def listen() -> None:
    """Count the library's events in this process (once, whatever the number of apps)."""
    for signal, receiver in _RECEIVERS:
        signal.connect(receiver, weak=False)


class _TableCollector(Collector):
    """The figures read from the jobs table when scraped."""

    def __init__(self, app: Flask) -> None:
        self.app = app

    def collect(self) -> Iterator[GaugeMetricFamily]:
        with self.app.app_context():
            count, due_for = waiting_now()
        yield GaugeMetricFamily(
            "async_request_jobs_waiting", "Jobs waiting to be claimed now.", value=count
        )
        age = 0.0 if due_for is None else due_for.total_seconds()
        yield GaugeMetricFamily(
            "async_request_oldest_waiting_seconds",
            "How long the oldest waiting job has been due (0 when none waits).",
            value=max(age, 0.0),
        )


def _count_poll(response: Response) -> Response:
    if request.endpoint in _STATUS_ENDPOINTS and request.method == "GET":
        kind = "long" if "wait" in request.headers.get("Prefer", "").lower() else "plain"
        POLLS.labels(kind, str(response.status_code)).inc()
    return response


def make_blueprint(app: Flask) -> Blueprint:
    """The blueprint serving the metrics of ``app`` (and of every process, in multiprocess mode)."""
    blueprint = Blueprint("async_request_metrics", __name__)
    table = _TableCollector(app)

    @blueprint.get("/metrics")
    def scrape() -> Response:
        registry = REGISTRY
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            # Every process's figures, from the files they share.
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        output = generate_latest(registry)
        table_registry = CollectorRegistry()
        table_registry.register(table)
        output += generate_latest(table_registry)
        return Response(output, mimetype=CONTENT_TYPE_LATEST)

    app.after_request(_count_poll)
    return blueprint
