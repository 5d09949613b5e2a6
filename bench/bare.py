"""The ceiling: a bare Flask view that answers 202."""

from __future__ import annotations

from flask import Flask

app = Flask(__name__)


@app.post("/submit")
def submit() -> tuple[dict[str, str], int]:
    return {"token": "none"}, 202


@app.get("/poll")
def poll() -> tuple[dict[str, str], int]:
    return {"status": "waiting"}, 202
