"""tracing: the request's trace context, stored and restored; the log records' ids."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from flask_async_request import Job, JobStatus, Worker, tracing
from flask_async_request.callbacks import deliver
from tests import workers
from tests.conftest import AppFactory, Receiver, current_db, reload_job

# The otel extra's API and the SDK of the dev group; where they are not installed
# (the CI steps of the lowest and newest releases run without the SDK), the rest of
# the suite runs the library without OpenTelemetry.
pytest.importorskip("opentelemetry.sdk")

from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

ROOT = Path(__file__).resolve().parents[1]
_EXPORTER = InMemorySpanExporter()
_PROVIDER = TracerProvider()
_PROVIDER.add_span_processor(SimpleSpanProcessor(_EXPORTER))
# The global provider can be set once in a process.
trace.set_tracer_provider(_PROVIDER)


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """The spans ended during the test."""
    _EXPORTER.clear()
    yield _EXPORTER
    _EXPORTER.clear()


def _named(exporter: InMemorySpanExporter, name: str) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.name == name]


class Baggage(Worker):
    """Answers the baggage it runs with."""

    def execute(self) -> tuple[int, str]:
        return 200, json.dumps(dict(baggage.get_all()))


def test_nothing_is_stored_without_a_trace(app: Flask, spans: InMemorySpanExporter) -> None:
    """A job created outside any span stores no trace context."""
    job = Job.create_and_enqueue(workers.Echo, 1)
    assert reload_job(job.id).trace_context is None


def test_the_first_attempt_is_a_child_of_the_submitting_span(
    app: Flask, spans: InMemorySpanExporter
) -> None:
    """The stored traceparent makes the first attempt's span a child of the submitting span."""
    with trace.get_tracer("test").start_as_current_span("submit") as submit:
        job = Job.create_and_enqueue(workers.Echo, 1)
    stored = json.loads(reload_job(job.id).trace_context or "{}")
    context_of = submit.get_span_context()
    assert stored["traceparent"].split("-")[1:3] == [
        f"{context_of.trace_id:032x}",
        f"{context_of.span_id:016x}",
    ]
    [run] = _named(spans, "async_request.run")
    assert run.parent is not None and run.parent.span_id == context_of.span_id
    assert run.context is not None and run.context.trace_id == context_of.trace_id
    assert run.attributes is not None and run.attributes["async_request.job_id"] == job.id
    assert run.attributes["async_request.attempt"] == 1
    assert not run.links


def test_the_worker_runs_with_the_request_s_baggage(
    app: Flask, spans: InMemorySpanExporter
) -> None:
    """Baggage set where the job was submitted is the current baggage in ``execute``."""
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        with trace.get_tracer("test").start_as_current_span("submit"):
            job = Job.create_and_enqueue(Baggage)
    finally:
        context.detach(token)
    assert "baggage" in json.loads(reload_job(job.id).trace_context or "{}")
    assert json.loads(reload_job(job.id).response or "") == {"tenant": "acme"}


def test_a_retry_starts_a_new_trace_linked_to_the_request(
    make_app: AppFactory, tmp_path: Path, spans: InMemorySpanExporter
) -> None:
    """Attempts after the first have a trace of their own, with a link to the submitting span."""
    app = make_app(ASYNC_REQUEST_RETRY=1)
    with app.app_context():
        with trace.get_tracer("test").start_as_current_span("submit") as submit:
            job = Job.create_and_enqueue(workers.FlakyThenOk, str(tmp_path / "runs"), 1)
        assert reload_job(job.id).status is JobStatus.PROCESSED
    first, second = sorted(
        _named(spans, "async_request.run"),
        key=lambda span: str((span.attributes or {})["async_request.attempt"]),
    )
    submitted = submit.get_span_context()
    assert first.parent is not None and first.parent.span_id == submitted.span_id
    assert second.context is not None and second.context.trace_id != submitted.trace_id
    [link] = second.links
    assert (link.context.trace_id, link.context.span_id) == (
        submitted.trace_id,
        submitted.span_id,
    )


def test_the_callback_carries_the_traceparent_of_a_linked_span(
    app: Flask, spans: InMemorySpanExporter
) -> None:
    """The callback's POST continues a new trace, linked to the submitting span."""
    receiver = Receiver()
    try:
        with trace.get_tracer("test").start_as_current_span("submit") as submit:
            job = Job.create_and_enqueue(workers.Echo, 1, callback_url=receiver.url)
        # Eager mode delivered it already; a redelivery reads the same stored context.
        assert deliver(job.id, 2)
    finally:
        receiver.server.shutdown()
    callbacks = _named(spans, "async_request.callback")
    assert callbacks
    submitted = submit.get_span_context()
    for (_, headers), span in zip(receiver.calls, callbacks, strict=True):
        lowered = {name.lower(): value for name, value in headers.items()}
        assert span.context is not None
        assert lowered["traceparent"].split("-")[1] == f"{span.context.trace_id:032x}"
        assert span.context.trace_id != submitted.trace_id
        assert [link.context.span_id for link in span.links] == [submitted.span_id]


def test_an_unreadable_stored_context_starts_a_plain_span(
    app: Flask, spans: InMemorySpanExporter
) -> None:
    """A stored context edited into nonsense gives a span of no parent, and the job still runs."""
    with tracing.job_span("x", "not json", 7, child=True):
        assert tracing.current_job_id() == 7
    with tracing.job_span("y", "[1]", 8, child=False):
        pass
    for span in spans.get_finished_spans():
        assert span.parent is None and not span.links


def test_a_huge_context_is_not_stored(app: Flask, spans: InMemorySpanExporter) -> None:
    """Baggage beyond MAX_CONTEXT_LENGTH is left out rather than stored."""
    token = context.attach(baggage.set_baggage("big", "x" * 9000))
    try:
        assert tracing.capture() is None
    finally:
        context.detach(token)


def test_library_records_carry_the_job_and_trace_ids(
    app: Flask, spans: InMemorySpanExporter, caplog: pytest.LogCaptureFixture
) -> None:
    """Records of the library's logger carry job_id and trace_id inside a job's span."""
    caplog.set_level(logging.INFO, logger="flask_async_request")
    job = Job.create_and_enqueue(workers.Echo, 1)
    current_db().session.commit()
    with tracing.job_span("async_request.run", None, job.id, child=True):
        trace_id = tracing.current_trace_id()
        logging.getLogger("flask_async_request").info("inside")
    logging.getLogger("flask_async_request").info("outside")
    inside, outside = (r for r in caplog.records if r.getMessage() in ("inside", "outside"))
    assert (inside.__dict__["job_id"], inside.__dict__["trace_id"]) == (job.id, trace_id)
    assert trace_id is not None and len(trace_id) == 32
    assert (outside.__dict__["job_id"], outside.__dict__["trace_id"]) == (None, None)


def test_the_filter_gives_a_handler_s_other_records_the_fields() -> None:
    """JobLogFilter on a handler sets the fields on records of any logger, and keeps them all."""
    record = logging.LogRecord("app", logging.INFO, __file__, 1, "message", (), None)
    assert tracing.JobLogFilter().filter(record)
    assert record.__dict__["job_id"] is None
    with tracing.job_span("z", None, 3, child=True):
        record = logging.LogRecord("app", logging.INFO, __file__, 1, "message", (), None)
        tracing.JobLogFilter().filter(record)
    assert record.__dict__["job_id"] == 3


def _prints_ok(script: str, *paths: Path) -> None:
    """Run ``script`` in a fresh interpreter (this tree and ``paths`` importable): it prints ok."""
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": ":".join(map(str, (ROOT, *paths))), "PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.strip() == "ok", result.stderr


def test_without_opentelemetry_nothing_is_stored_and_jobs_run(tmp_path: Path) -> None:
    """With OpenTelemetry not importable, the module is a no-op and a job runs as ever."""
    script = f"""
import sys
sys.modules["opentelemetry"] = None
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_async_request import AsyncRequest, Job, tracing
from tests import workers
assert not tracing.AVAILABLE and tracing.capture() is None
app = Flask(__name__)
app.config.update(
    SECRET_KEY="x" * 64, SQLALCHEMY_DATABASE_URI="sqlite:///{tmp_path}/app.db",
    CELERY={{"task_always_eager": True}},
)
db = SQLAlchemy(app)
AsyncRequest(app)
with app.app_context():
    db.create_all()
    job = Job.create_and_enqueue(workers.Echo, 1)
    db.session.refresh(job)
    assert job.status.value == "processed" and job.trace_context is None, job
print("ok")
"""
    _prints_ok(script)


def test_a_message_the_sweeper_sent_again_runs_in_a_linked_trace(
    make_app: AppFactory, spans: InMemorySpanExporter
) -> None:
    """A waiting job whose message was sent again by the sweeper is linked, not a child."""
    from flask_async_request import lifecycle
    from flask_async_request.runner import run_job
    from flask_async_request.state import get_state

    app = make_app(CELERY={"task_always_eager": False, "broker_url": "memory://"})
    with app.app_context():
        with trace.get_tracer("test").start_as_current_span("submit") as submit:
            first = Job.create_and_enqueue(workers.Echo, 1).id
            resent = Job.create_and_enqueue(workers.Echo, 2).id
        # What the sweeper does as it sends a stale job's message again.
        assert lifecycle.touch_waiting(get_state().store(), resent)
        assert run_job(first) is JobStatus.PROCESSED
        assert run_job(resent) is JobStatus.PROCESSED
    runs = {
        (span.attributes or {})["async_request.job_id"]: span
        for span in _named(spans, "async_request.run")
    }
    submitted = submit.get_span_context()
    parent = runs[first].parent
    assert parent is not None and parent.span_id == submitted.span_id
    assert runs[resent].parent is None
    assert [link.context.span_id for link in runs[resent].links] == [submitted.span_id]


def test_no_span_is_started_until_a_provider_is_set(tmp_path: Path) -> None:
    """With no tracer provider a job starts no span and keeps the request's baggage;
    a provider set later traces the next job."""
    # Not this module's Baggage: importing this module sets a provider.
    (tmp_path / "baggage_worker.py").write_text(
        "import json\n"
        "from opentelemetry import baggage\n"
        "from flask_async_request import Worker\n"
        "class Baggage(Worker):\n"
        "    def execute(self):\n"
        "        return 200, json.dumps(dict(baggage.get_all()))\n"
    )
    script = f"""
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from opentelemetry import baggage, context, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from flask_async_request import AsyncRequest, Job
from baggage_worker import Baggage

started = []
def counted(method):
    def start(self, *args, **kwargs):
        started.append(args)
        return method(self, *args, **kwargs)
    return start
for tracer_class in (trace.ProxyTracer, trace.NoOpTracer):
    tracer_class.start_as_current_span = counted(tracer_class.start_as_current_span)
    tracer_class.start_span = counted(tracer_class.start_span)

app = Flask(__name__)
app.config.update(
    SECRET_KEY="x" * 64, SQLALCHEMY_DATABASE_URI="sqlite:///{tmp_path}/app.db",
    CELERY={{"task_always_eager": True}},
)
db = SQLAlchemy(app)
AsyncRequest(app)

def run():
    token = context.attach(baggage.set_baggage("tenant", "acme"))
    try:
        job = Job.create_and_enqueue(Baggage)
    finally:
        context.detach(token)
    db.session.refresh(job)
    assert job.status.value == "processed", job
    return job.response

with app.app_context():
    db.create_all()
    assert run() == '{{"tenant": "acme"}}'
    assert started == [], started
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    assert run() == '{{"tenant": "acme"}}'
    names = [span.name for span in exporter.get_finished_spans()]
    assert names == ["async_request.run"], names
print("ok")
"""
    _prints_ok(script, tmp_path)
