"""Progress and cancellation end to end: real worker, PostgreSQL, Redis, HTTP polls."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request

from flask_async_request import Job, accepted
from tests import workers
from tests.conftest import Internals, json_of, poll
from tests.integration.conftest import Stack, effects

pytestmark = pytest.mark.integration


def _start(app: Flask, steps: int, pause: float) -> str:
    if "steps_view" not in app.view_functions:

        @app.post("/steps")
        def steps_view() -> Any:
            body = request.get_json()
            assert body is not None
            return accepted(Job.create_and_enqueue(workers.SlowSteps, body["steps"], body["pause"]))

    response = app.test_client().post("/steps", json={"steps": steps, "pause": pause})
    assert response.status_code == 202
    assert response.headers["Location"] == json_of(response)["url"]
    assert "/async_request/job/" in response.headers["Location"]
    return str(json_of(response)["token"])


def test_polls_show_progress_then_the_reply(stack: Stack) -> None:
    """While the worker runs, polls show rising progress and its message; then 200."""
    app, _ = stack()
    token = _start(app, steps=8, pause=0.25)
    client = app.test_client()
    seen: list[tuple[float, str]] = []
    deadline = time.monotonic() + 30
    while (response := poll(client, token)).status_code == 202:
        assert response.headers["Retry-After"] == "1"
        body = response.json
        if body["progress"] is not None:
            seen.append((body["progress"], body["message"]))
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert response.status_code == 200
    assert response.json["status"] == "processed"
    fractions = [fraction for fraction, _ in seen]
    assert fractions == sorted(fractions)
    assert len(set(fractions)) >= 3, seen
    assert seen[-1][1].startswith("step ")


def test_delete_stops_a_running_job(stack: Stack, tmp_path: Path) -> None:
    """DELETE while the worker runs: the worker stops early and polls say cancelled."""
    app, _ = stack()
    token = _start(app, steps=40, pause=0.1)
    client = app.test_client()
    deadline = time.monotonic() + 30
    while poll(client, token).json.get("status") != "processing":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    time.sleep(0.5)
    response = client.delete("/async_request/job", headers={"X-JOB-AUTHORIZATION": token})
    assert response.status_code == 200
    assert json_of(response)["status"] == "cancelled"
    time.sleep(1.0)  # let the worker notice and stop
    steps_done = len(effects(tmp_path))
    time.sleep(1.0)
    assert len(effects(tmp_path)) == steps_done, "the worker kept going after the cancel"
    assert steps_done < 40
    final = poll(client, token)
    assert final.status_code == 200
    assert final.json["response"]["status_code"] == 499


def test_delete_of_a_queued_job_means_it_never_runs(stack: Stack, tmp_path: Path) -> None:
    """A job cancelled before any worker took it never runs."""
    app, _ = stack(concurrency=1)
    blocker = _start(app, steps=6, pause=0.25)
    queued = _start(app, steps=3, pause=0.01)
    client = app.test_client()
    cancelled = client.delete("/async_request/job", headers={"X-JOB-AUTHORIZATION": queued})
    assert cancelled.status_code == 200
    deadline = time.monotonic() + 30
    while poll(client, blocker).status_code == 202:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(1.0)
    runs = {name.split("-")[0] for name in effects(tmp_path)}
    assert len(runs) == 1, f"only the blocker ran, got {runs}"
    assert poll(client, queued).json["status"] == "cancelled"


def test_long_poll_returns_when_the_worker_finishes(stack: Stack) -> None:
    """Prefer: wait=N on PostgreSQL: the answer comes on the worker's notification."""
    app, _ = stack()
    token = _start(app, steps=4, pause=0.2)
    client = app.test_client()
    started = time.monotonic()
    response = client.get(
        "/async_request/job",
        headers={"X-JOB-AUTHORIZATION": f"Bearer {token}", "Prefer": "wait=20"},
    )
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.json
    assert json_of(response)["status"] == "processed"
    assert response.headers["Preference-Applied"] == "wait=20"
    assert 0.5 < elapsed < 5


def test_long_poll_listens_instead_of_polling(stack: Stack, internals: Internals) -> None:
    """While a long poll waits on PostgreSQL it sends no queries (LISTEN/NOTIFY)."""
    from flask_async_request.store import JobStore

    app, _ = stack()
    token = _start(app, steps=6, pause=0.25)
    client = app.test_client()
    fetches: list[int] = []
    original = JobStore.fetch_reply

    def counting(self: JobStore, job_id: int) -> Any:
        fetches.append(job_id)
        return original(self, job_id)

    JobStore.fetch_reply = counting  # type: ignore[method-assign]
    try:
        response = client.get(
            "/async_request/job",
            headers={"X-JOB-AUTHORIZATION": f"Bearer {token}", "Prefer": "wait=20"},
        )
    finally:
        JobStore.fetch_reply = original  # type: ignore[method-assign]
    assert response.status_code == 200
    with app.app_context():
        assert internals.job_store(app).listen
    # The first read, the re-check after LISTEN and the final read: no polling.
    assert len(fetches) <= 3, fetches


def test_callback_from_a_real_worker(stack: Stack) -> None:
    """A real worker's job end reaches a loopback receiver, signed."""
    from flask_async_request.webhooks import verify_callback
    from tests.conftest import Receiver

    app, _ = stack()
    receiver = Receiver()
    try:
        with app.app_context():
            job_id = Job.create_and_enqueue(workers.Echo, "hook", callback_url=receiver.url).id
        receiver.wait(timeout=30)
        body, headers = receiver.calls[0]
        assert verify_callback(body, headers, key=app.config["SECRET_KEY"])
        assert f'"job_id":{job_id}' in body.decode()
    finally:
        receiver.server.shutdown()


def test_idempotent_creation_with_a_real_worker(stack: Stack) -> None:
    """Two creations with one key make one job, run once."""
    app, _ = stack()
    with app.app_context():
        first = Job.create_and_enqueue(workers.Sleep, 0.2, tag="once", idempotency_key="k1").id
        again = Job.create_and_enqueue(workers.Sleep, 0.2, tag="once", idempotency_key="k1").id
    assert first == again


def test_asynchronous_view_runs_in_the_worker_process(stack: Stack) -> None:
    """An @asynchronous view is replayed by the real worker; its response is the reply."""
    import json
    import os

    app, worker = stack()
    client = app.test_client()
    response = client.post("/squares/4", json={"scale": 10})
    assert response.status_code == 202
    waited = client.get(
        "/async_request/job",
        headers={"X-JOB-AUTHORIZATION": json_of(response)["token"], "Prefer": "wait=20"},
    )
    # What the answer and the worker said, should a run ever see this fail.
    assert waited.status_code == 200, (waited.get_data(as_text=True), worker.output()[-4000:])
    reply = json_of(waited)["response"]
    assert reply["status_code"] == 201
    assert reply["content_type"] == "application/json"
    body = json.loads(reply["body"])
    assert body["squares"] == [0, 10, 40, 90]
    assert body["pid"] != os.getpid()


def test_signals_fire_in_web_and_worker_processes(stack: Stack, tmp_path: Path) -> None:
    """job_enqueued fires in the web process, job_finished in the worker process."""
    from flask_async_request import signals

    app, _ = stack()
    enqueued: list[int] = []

    def on_enqueued(sender: Any, job_id: int, **extra: Any) -> None:
        enqueued.append(job_id)

    signals.job_enqueued.connect(on_enqueued)
    try:
        with app.app_context():
            job_id = Job.create_and_enqueue(workers.Echo, "signal").id
    finally:
        signals.job_enqueued.disconnect(on_enqueued)
    assert enqueued == [job_id]
    deadline = time.monotonic() + 30
    trace = tmp_path / "signals" / f"finished-{job_id}-200"
    while not trace.exists():
        assert time.monotonic() < deadline, "job_finished never fired in the worker"
        time.sleep(0.1)
