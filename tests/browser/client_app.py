"""The app the browser client's tests serve: its views, what it records, and the page helpers."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, request, url_for

from flask_async_request import Job, Worker, accepted
from tests import workers

MODULE_URL = "/async_request/static/async-request.mjs"
CLASSIC_URL = "/async_request/static/async-request.js"


class Steps(Worker):
    """Reports its progress in ``steps`` steps, ``delay`` seconds apart."""

    def execute(self, steps: int, delay: float) -> tuple[int, str]:
        for step in range(1, steps + 1):
            time.sleep(delay)
            self.progress(step, steps, f"step {step} of {steps}")
        return 200, json.dumps({"steps": steps})


@dataclass
class Poll:
    """One request to the status endpoint, as the server received it."""

    method: str
    path: str
    headers: dict[str, str]
    at: float


@dataclass
class Served:
    """A served test app: its url, the polls it received, and faults to answer polls with."""

    url: str
    polls: list[Poll] = field(default_factory=list)
    #: Answers given, in order, to the next polls instead of the endpoint's own; headers
    #: may be a function, called when the answer is given.
    faults: list[tuple[int, Any, Any]] = field(default_factory=list)

    def gets(self) -> list[Poll]:
        return [p for p in self.polls if p.method == "GET"]


def _echo() -> dict[str, Any]:
    """What the view received, as the Echo job's argument."""
    files = {
        name: {
            "filename": upload.filename,
            "content_type": upload.content_type,
            "text": upload.read().decode(),
        }
        for name, upload in request.files.items()
    }
    return {
        "content_type": request.headers.get("Content-Type"),
        "accept": request.headers.get("Accept"),
        "x_test": request.headers.get("X-Test"),
        "form": request.form.to_dict(),
        "files": files,
        "data": "" if request.form or files else request.get_data(as_text=True),
    }


PAGES = {
    "module": f"""<!doctype html><title>module</title>
<script type="module">
  import * as client from "{MODULE_URL}";
  window.client = client;
  window.loaded = true;
</script>""",
    "classic": f"""<!doctype html><title>classic</title>
<script src="{CLASSIC_URL}"></script>
<script>window.client = AsyncRequest; window.loaded = true;</script>""",
}


def build(app: Flask, served: Served) -> None:
    """Add the client's test views to ``app``, recording its polls in ``served``."""

    @app.get("/page/<name>")
    def page(name: str) -> Any:
        return PAGES[name]

    @app.post("/echo")
    def echo() -> Any:
        return accepted(Job.create_and_enqueue(workers.Echo, _echo()))

    @app.post("/sleep")
    def sleep() -> Any:
        return accepted(Job.create_and_enqueue(workers.Sleep, float(request.args["seconds"])))

    @app.post("/steps")
    def steps() -> Any:
        payload = request.get_json()
        return accepted(Job.create_and_enqueue(Steps, payload["steps"], payload["delay"]))

    @app.post("/shared")
    def shared() -> Any:
        """The header form: the shared endpoint's url in the body, no Location."""
        job = Job.create_and_enqueue(workers.Sleep, 0.5)
        return {"token": job.token, "url": url_for("async_request.job", _external=True)}, 202

    @app.post("/refuse")
    def refuse() -> Any:
        return {"errors": [{"message": "month must be from 1 to 12"}]}, 422

    @app.before_request
    def record_and_inject() -> Any:
        if not request.path.startswith("/async_request/job"):
            return None
        served.polls.append(
            Poll(request.method, request.path, dict(request.headers), time.monotonic())
        )
        if served.faults:
            status, headers, body = served.faults.pop(0)
            if callable(headers):
                headers = headers()
            return Response(json.dumps(body), status, headers, mimetype="application/json")
        return None


def open_page(page: Any, served: Served, name: str = "module") -> Any:
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.goto(f"{served.url}/page/{name}")
    page.wait_for_function("window.loaded === true", timeout=10_000)
    assert problems == []
    return page


def run(page: Any, script: str, arg: Any = None) -> Any:
    """Evaluate an async function of ``(client, arg)`` in the page; returns its result."""
    return page.evaluate(f"(arg) => ({script})(window.client, arg)", arg)
