"""Traces across a real `celery worker` process: parent, links and the callback's traceparent."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from flask_async_request import Job, JobStatus
from tests import workers
from tests.conftest import Receiver, current_db
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def _spans(path: Path, name: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """The first ``count`` spans named ``name`` the processes wrote to ``path``."""
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        found = [span for line in lines if (span := json.loads(line))["name"] == name]
        if len(found) >= count:
            return found
        assert time.monotonic() < deadline, f"{len(found)} {name} spans: {lines}"
        time.sleep(0.2)


def test_a_job_s_trace_crosses_into_the_worker_process(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """First attempt: child of the submitting span; retry and callback: new traces linked to it."""
    from opentelemetry import trace

    spans_file = tmp_path / "spans.jsonl"
    monkeypatch.setenv("FAR_TEST_SPANS_FILE", str(spans_file))
    monkeypatch.setenv("FAR_TEST_RETRY", "1")
    app, worker = stack()
    receiver = Receiver()
    try:
        with app.app_context(), trace.get_tracer("test").start_as_current_span("submit") as span:
            job_id = Job.create_and_enqueue(
                workers.FlakyThenOk, str(tmp_path / "runs"), 1, callback_url=receiver.url
            ).id
        receiver.wait(timeout=60)
        submitted = span.get_span_context()
        trace_id, span_id = f"{submitted.trace_id:032x}", f"{submitted.span_id:016x}"
        runs = sorted(
            _spans(spans_file, "async_request.run", 2),
            key=lambda s: s["attributes"]["async_request.attempt"],
        )
        [callback] = _spans(spans_file, "async_request.callback", 1)
    finally:
        receiver.server.shutdown()
    first, second = runs
    assert {first["pid"], second["pid"], callback["pid"]}.isdisjoint({os.getpid()})
    assert (first["trace_id"], first["parent"]) == (trace_id, span_id), worker.output()
    assert first["attributes"]["async_request.job_id"] == job_id
    assert second["trace_id"] != trace_id and second["parent"] is None
    assert second["links"] == [span_id]
    assert callback["trace_id"] != trace_id and callback["links"] == [span_id]
    (_, headers) = receiver.calls[0]
    lowered = {name.lower(): value for name, value in headers.items()}
    assert lowered["traceparent"].split("-")[1:3] == [callback["trace_id"], callback["span_id"]]
    with app.app_context():
        job = current_db().session.get(Job, job_id)
        assert job is not None and job.status is JobStatus.PROCESSED
        assert json.loads(job.trace_context or "{}")["traceparent"].split("-")[1] == trace_id
