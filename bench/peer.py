"""The usual pattern, as on the Flask documentation's Celery page: delay(), then AsyncResult."""

from __future__ import annotations

from typing import Any

from celery import Celery, Task, shared_task
from celery.result import AsyncResult
from flask import Flask

from bench.settings import PEER_QUEUE, REDIS_URL


def celery_init_app(app: Flask) -> Celery:
    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


app = Flask(__name__)
app.config["CELERY"] = {
    "broker_url": REDIS_URL,
    "result_backend": REDIS_URL,
    "task_ignore_result": True,
    "task_default_queue": PEER_QUEUE,
}
celery_app = celery_init_app(app)


@shared_task(ignore_result=False)  # type: ignore[untyped-decorator]
def noop() -> dict[str, bool]:
    return {"ok": True}


@app.post("/submit")
def submit() -> tuple[dict[str, Any], int]:
    result = noop.delay()
    return {"result_id": result.id}, 202


@app.get("/result/<id>")
def task_result(id: str) -> dict[str, object]:
    result = AsyncResult(id)
    return {
        "ready": result.ready(),
        "successful": result.successful(),
        "value": result.result if result.ready() else None,
    }
