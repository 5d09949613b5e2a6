"""A small app wired to real services; the tests and the `celery worker` process both import it.

Settings come from the environment, so each test run can use its own queue.
"""

from __future__ import annotations

import os
from typing import Any

from flask import Flask, has_request_context, request
from flask_sqlalchemy import SQLAlchemy

from flask_async_request import AsyncRequest, Job, accepted, asynchronous, signals
from tests.workers import ReturnChunks

DATABASE_URL = os.environ.get(
    "FAR_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("FAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("FAR_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")

db = SQLAlchemy()
async_request = AsyncRequest()
#: The owner of the jobs a test creates outside a request; a request's is its X-User header.
OWNER: dict[str, str | None] = {"name": None}


@async_request.identity_loader
def _identity() -> str | None:
    if has_request_context():
        return request.headers.get("X-User")
    return OWNER["name"]


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="integration-secret-key-long-enough-for-every-hmac-algorithm-here",
        SQLALCHEMY_DATABASE_URI=DATABASE_URL,
        # Without the ping, a pooled connection whose backend is gone is found
        # by the statement that uses it, as in a deployment that saves the round trip.
        SQLALCHEMY_ENGINE_OPTIONS={"pool_pre_ping": os.environ.get("FAR_TEST_PRE_PING") != "0"},
        CELERY={
            "broker_url": os.environ.get("FAR_TEST_BROKER_URL", REDIS_URL),
            "broker_connection_retry_on_startup": True,
            "worker_prefetch_multiplier": 1,
        },
        ASYNC_REQUEST_QUEUE=os.environ.get("FAR_TEST_QUEUE", "far-test"),
        # The tests' callback receivers listen on 127.0.0.1.
        ASYNC_REQUEST_CALLBACK_ALLOW_PRIVATE=True,
    )
    # Short clocks for the chaos test; the defaults elsewhere.
    for key, env in (
        ("ASYNC_REQUEST_LEASE", "FAR_TEST_LEASE"),
        ("ASYNC_REQUEST_WAITING_TIMEOUT", "FAR_TEST_WAITING_TIMEOUT"),
        ("ASYNC_REQUEST_SWEEP_INTERVAL", "FAR_TEST_SWEEP_EVERY"),
        ("ASYNC_REQUEST_OWNER_DEFER", "FAR_TEST_OWNER_DEFER"),
    ):
        if env in os.environ:
            app.config[key] = float(os.environ[env])
    # Where large results go, and whether a finished job's poll redirects to its result.
    if "FAR_TEST_RESULT_STORE" in os.environ:
        app.config["ASYNC_REQUEST_RESULT_STORE"] = os.environ["FAR_TEST_RESULT_STORE"]
    if os.environ.get("FAR_TEST_REDIRECT_FINISHED") == "1":
        app.config["ASYNC_REQUEST_REDIRECT_FINISHED"] = True
    if "FAR_TEST_RETRY" in os.environ:
        app.config["ASYNC_REQUEST_RETRY"] = int(os.environ["FAR_TEST_RETRY"])
    if "FAR_TEST_OWNER_MAX_RUNNING" in os.environ:
        app.config["ASYNC_REQUEST_OWNER_MAX_RUNNING"] = int(
            os.environ["FAR_TEST_OWNER_MAX_RUNNING"]
        )
    if "FAR_TEST_CLEAN_EVERY" in os.environ:
        app.config["ASYNC_REQUEST_CLEAN_JOBS_CRON"] = float(os.environ["FAR_TEST_CLEAN_EVERY"])
        app.config["ASYNC_REQUEST_JOBS_EXPIRATION"] = 3600
    db.init_app(app)
    async_request.init_app(app)

    @app.post("/squares/<int:n>")
    @asynchronous
    def squares(n: int) -> Any:
        """An ordinary view made asynchronous: the worker process runs it."""
        scale = request.get_json()["scale"]
        return {"squares": [i * i * scale for i in range(n)], "pid": os.getpid()}, 201

    @app.post("/chunks/<int:count>")
    def chunks(count: int) -> Any:
        """A result of ``count`` MiB, made by the worker process as a generator."""
        return accepted(Job.create_and_enqueue(ReturnChunks, count, 1024 * 1024))

    return app


@signals.job_finished.connect
def _record_finished(sender: Flask, job_id: int, **extra: Any) -> None:
    """Leave a trace of the worker-side signal for the tests to find."""
    folder = os.environ.get("FAR_TEST_SIGNALS_DIR")
    if folder:
        with open(os.path.join(folder, f"finished-{job_id}-{extra['status_code']}"), "w"):
            pass


def _export_spans_to(path: str) -> None:
    """Write every ended span as a JSON line to ``path``: the trace tests read them there."""
    import json
    from collections.abc import Sequence

    from opentelemetry import trace
    from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class FileExporter(SpanExporter):
        def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
            with open(path, "a", encoding="utf-8") as out:
                for span in spans:
                    assert span.context is not None
                    record = {
                        "name": span.name,
                        "pid": os.getpid(),
                        "trace_id": f"{span.context.trace_id:032x}",
                        "span_id": f"{span.context.span_id:016x}",
                        "parent": None if span.parent is None else f"{span.parent.span_id:016x}",
                        "links": [f"{link.context.span_id:016x}" for link in span.links],
                        "attributes": dict(span.attributes or {}),
                    }
                    out.write(json.dumps(record) + "\n")
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(FileExporter()))
    trace.set_tracer_provider(provider)


if os.environ.get("FAR_TEST_SPANS_FILE"):
    _export_spans_to(os.environ["FAR_TEST_SPANS_FILE"])

app = create_app()
celery_app = app.extensions["celery"]

# Like many apps, touch the database at import: the `celery worker` parent then
# holds pooled connections when it forks its children, the case that corrupts
# transactions unless each child gets its own pool.
with app.app_context():
    db.session.execute(db.text("SELECT 1"))
    db.session.commit()
