"""The ceiling: a bare Flask view that answers 202."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from flask import Flask, Response

app = Flask(__name__)


@app.post("/submit")
def submit() -> tuple[dict[str, str], int]:
    return {"token": "none"}, 202


@app.get("/poll")
def poll() -> tuple[dict[str, str], int]:
    return {"status": "waiting"}, 202


#: Set by ``POST /release``: every ``GET /held`` waiting on it answers then.
released = threading.Event()


@app.get("/held")
def held() -> tuple[dict[str, str], int]:
    """A request held until ``/release``: bench/longpoll.py's floor for waking many at once."""
    released.wait(120)
    return {"status": "processed"}, 200


@app.post("/release")
def release() -> tuple[dict[str, str], int]:
    released.set()
    return {"status": "released"}, 200


#: The latest value published for each job, and the condition its streams wait on.
_published: dict[int, str] = {}
_changed = threading.Condition()


@app.get("/events/<int:job>")
def events(job: int) -> Response:
    """An event stream of ``job``'s published values: bench/sse.py's floor.

    The same events as the library's stream, pushed from memory as they are
    published, with no job, token or database.
    """

    def stream() -> Iterator[str]:
        yield "retry: 1000\n\n"
        yield 'id: 1\nevent: status\ndata: {"status":"processing","attempts":1}\n\n'
        seen: str | None = None
        number = 2

        def changed() -> bool:
            return _published.get(job) != seen

        while True:
            with _changed:
                _changed.wait_for(changed, timeout=60)
                value = _published.get(job)
            if value is None or value == seen:
                return
            seen = value
            if value == "end":
                yield 'id: end\nevent: end\ndata: {"status":"processed","response":{}}\n\n'
                return
            yield f'id: {number}\nevent: progress\ndata: {{"progress":{value},"message":null}}\n\n'
            number += 1

    return Response(stream(), mimetype="text/event-stream")


@app.post("/publish/<int:job>/<value>")
def publish(job: int, value: str) -> tuple[dict[str, str], int]:
    with _changed:
        _published[job] = value
        _changed.notify_all()
    return {"status": "published"}, 200
