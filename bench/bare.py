"""The ceiling: a bare Flask view that answers 202."""

from __future__ import annotations

import threading

from flask import Flask

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
