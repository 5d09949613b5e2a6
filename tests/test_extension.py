"""The AsyncRequest extension object: init_app, per-app state, blueprint, Celery app, table."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from celery import Celery
from flask import Flask, url_for
from flask_sqlalchemy import SQLAlchemy

from flask_async_request import AsyncRequest, Job
from flask_async_request.broker import PROCESS_TASK
from tests.conftest import SECRET, AppFactory, Internals, poll
from tests.workers import Echo


def _bare_app(tmp_path: Path, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        SECRET_KEY=SECRET,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/bare.db",
        CELERY={"task_always_eager": True},
    )
    app.config.update(config)
    return app


def test_finds_db_in_app_extensions(tmp_path: Path, internals: Internals) -> None:
    """init_app without db= uses the SQLAlchemy registered on the app."""
    app = _bare_app(tmp_path)
    db = SQLAlchemy(app)
    AsyncRequest().init_app(app)
    assert internals.db(app) is db


def test_explicit_db_wins(tmp_path: Path, internals: Internals) -> None:
    """A db passed to the constructor is used even if another is registered."""
    app = _bare_app(tmp_path)
    SQLAlchemy(app)
    other = SQLAlchemy()
    AsyncRequest(app, db=other)
    assert internals.db(app) is other


def test_missing_sqlalchemy_is_a_clear_error(tmp_path: Path) -> None:
    """Without Flask-SQLAlchemy on the app, init_app says how to fix it."""
    with pytest.raises(RuntimeError, match=r"db\.init_app\(app\)"):
        AsyncRequest(_bare_app(tmp_path))


def test_second_init_app_is_refused(make_app: AppFactory) -> None:
    """Initialising the same app twice raises RuntimeError naming the fix."""
    app = make_app()
    with pytest.raises(RuntimeError, match="already initialised"):
        AsyncRequest().init_app(app)


def test_blueprint_url_for(app: Flask) -> None:
    """url_for('async_request.job') points at the default prefix."""
    with app.test_request_context():
        assert url_for("async_request.job") == "/async_request/job"


def test_url_prefix_is_configurable(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_URL_PREFIX moves the status endpoint."""
    app = make_app(ASYNC_REQUEST_URL_PREFIX="/api/v1/jobs")
    with app.test_request_context():
        assert url_for("async_request.job") == "/api/v1/jobs/job"
    assert app.test_client().get("/api/v1/jobs/job").status_code == 400


def test_celery_app_is_stored_and_has_the_tasks(app: Flask) -> None:
    """The Celery app lives in app.extensions['celery'] with the processing task."""
    celery_app = app.extensions["celery"]
    assert isinstance(celery_app, Celery)
    assert PROCESS_TASK in celery_app.tasks
    assert celery_app.conf.task_always_eager is True


def test_existing_celery_app_is_reused(tmp_path: Path) -> None:
    """A Celery app already in app.extensions['celery'] gets the tasks instead of a new one."""
    app = _bare_app(tmp_path)
    SQLAlchemy(app)
    mine = Celery("mine", task_always_eager=True)
    mine.conf.task_always_eager = True
    app.extensions["celery"] = mine
    AsyncRequest(app)
    assert app.extensions["celery"] is mine
    assert PROCESS_TASK in mine.tasks
    with app.app_context():
        app.extensions["sqlalchemy"].create_all()
        job = Job.create_and_enqueue(Echo, 1)
        assert job.status.value == "processed"


def test_user_tasks_run_in_app_context(app: Flask) -> None:
    """Tasks defined on the Celery app see current_app, as in the Flask docs' pattern."""
    from flask import current_app

    celery_app = app.extensions["celery"]

    @celery_app.task(shared=False)  # type: ignore[untyped-decorator]  # Celery has no type hints
    def app_name() -> str:
        return current_app.name

    assert app_name.delay().get() == app.name


def test_create_all_creates_the_jobs_table(app: Flask) -> None:
    """db.create_all() creates async_request_jobs with its indexes."""
    engine = app.extensions["sqlalchemy"].engine
    inspector = sa.inspect(engine)
    assert "async_request_jobs" in inspector.get_table_names()
    indexed = {tuple(ix["column_names"]) for ix in inspector.get_indexes("async_request_jobs")}
    assert {("id",), ("worker", "id"), ("created_at",), ("finished_at",)} <= indexed
    assert not any("status" in columns for columns in indexed)
    uniques = inspector.get_unique_constraints("async_request_jobs")
    unique_index = [ix for ix in inspector.get_indexes("async_request_jobs") if ix["unique"]]
    assert any(c["column_names"] == ["uid"] for c in uniques + unique_index)


def test_autogenerate_sees_the_jobs_and_results_tables(make_app: AppFactory) -> None:
    """Alembic's autogenerate (what Flask-Migrate runs) proposes the jobs and results tables."""
    app = make_app(create_tables=False)
    db = app.extensions["sqlalchemy"]
    with app.app_context(), db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), db.metadata)
    added = [d[1].name for d in diff if d[0] == "add_table"]
    assert sorted(added) == ["async_request_jobs", "async_request_results"]


def test_autogenerate_finds_no_difference_after_create_all(app: Flask) -> None:
    """The table db.create_all() makes is what the model declares."""
    db = app.extensions["sqlalchemy"]
    with db.engine.connect() as conn:
        assert compare_metadata(MigrationContext.configure(conn), db.metadata) == []


def test_two_apps_with_different_configs(make_app: AppFactory) -> None:
    """Each app signs with its own key and serves its own jobs."""
    first = make_app(SECRET_KEY="a" * 40)
    second = make_app(SECRET_KEY="b" * 40, ASYNC_REQUEST_URL_PREFIX="/other")
    assert first.extensions["celery"] is not second.extensions["celery"]
    with first.app_context():
        token = Job.create_and_enqueue(Echo, "first").token
    assert poll(first.test_client(), token).status_code == 200
    response = second.test_client().get("/other/job", headers={"X-JOB-AUTHORIZATION": token})
    assert response.status_code == 400


def test_embedded_mode_warns_when_its_worker_starts(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture, internals: Internals
) -> None:
    """With no broker configured, the embedded worker warns it is for development when it starts."""
    with caplog.at_level(logging.WARNING, logger="flask_async_request"):
        app = make_app(CELERY={})
        assert "development only" not in caplog.text
        internals.embedded_worker(app).ensure_started()
    assert "development only" in caplog.text


def _celery_init_app(app: Flask) -> Any:
    """The Flask documentation's Celery recipe, as an app would copy it."""
    from celery import Celery, Task

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


@pytest.mark.parametrize("recipe_first", [True, False])
def test_flask_docs_celery_recipe_in_either_order(tmp_path: Any, recipe_first: bool) -> None:
    """celery_init_app(app) before or after AsyncRequest(app): its Celery app runs the jobs."""
    from flask_sqlalchemy import SQLAlchemy

    from flask_async_request import AsyncRequest, Job
    from flask_async_request.broker import PROCESS_TASK
    from tests import workers

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="k" * 32,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/recipe.db",
        CELERY={"task_always_eager": True},
    )
    db = SQLAlchemy(app)
    if recipe_first:
        celery_app = _celery_init_app(app)
        AsyncRequest(app)
    else:
        AsyncRequest(app)
        celery_app = _celery_init_app(app)
    assert PROCESS_TASK in celery_app.tasks
    with app.app_context():
        db.create_all()
        job = Job.create_and_enqueue(workers.Echo, "recipe")
        assert job.status.value == "processed"
        assert app.extensions["celery"] is celery_app
