"""App-factory fixtures: unit tests run Celery eagerly on SQLite."""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import sqlalchemy as sa
from celery import Celery
from celery.app.task import Task
from flask import Flask, current_app, request
from flask_sqlalchemy import SQLAlchemy
from hypothesis import settings
from sqlalchemy.engine import Engine
from sqlalchemy.orm import scoped_session
from werkzeug.serving import ThreadedWSGIServer, make_server
from werkzeug.test import TestResponse

from flask_async_request import AsyncRequest, Job, JobStatus, results
from flask_async_request.broker import PROCESS_TASK
from flask_async_request.models import ResultChunk
from flask_async_request.state import get_state
from tests.s3server import S3Server, serve

if TYPE_CHECKING:
    from flask_async_request.config import Settings
    from flask_async_request.embedded import EmbeddedWorker
    from flask_async_request.state import AsyncRequestState, Outbox
    from flask_async_request.store import JobStore
    from flask_async_request.tokens import TokenSigner, TokenVerifier

# CI explores the same examples each run, so a red run always reproduces;
# local runs keep exploring new ones.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")

SECRET = "test-secret-key-long-enough-for-every-hmac-algorithm-hs256-hs384-hs512"

AppFactory = Callable[..., Flask]


class Internals:
    """What the extension keeps for any app, for the tests that check it there.

    It is not public: this class is the tests' one way to it, for the tests
    whose behaviour lives there (the embedded worker, the job store's
    statements, the settings read from the config).
    """

    def state(self, app: Flask) -> AsyncRequestState:
        """All that ``app``'s extension keeps, for the functions that take it whole."""
        return get_state(app)

    def db(self, app: Flask) -> SQLAlchemy:
        """The Flask-SQLAlchemy extension that ``app``'s extension uses."""
        return get_state(app).db

    def settings(self, app: Flask) -> Settings:
        """The settings ``app``'s extension read from its config."""
        return get_state(app).settings

    def job_store(self, app: Flask) -> JobStore:
        """The job store of ``app`` in this process (needs its app context)."""
        return get_state(app).store()

    def verify_token(self, app: Flask) -> TokenVerifier:
        """Verifies ``app``'s tokens as its status endpoint does."""
        return get_state(app).verify_token

    def sign_token(self, app: Flask) -> TokenSigner:
        """Signs ``app``'s new jobs' tokens, its key prepared once."""
        return get_state(app).sign_token

    def outbox(self, app: Flask) -> Outbox | None:
        """Where ``app`` publishes instead of its broker, while a JobRunner holds it."""
        return get_state(app).outbox

    def embedded_worker_or_none(self, app: Flask) -> EmbeddedWorker | None:
        """The embedded worker of ``app``; ``None`` when a broker is configured."""
        return get_state(app).embedded

    def embedded_worker(self, app: Flask) -> EmbeddedWorker:
        """The embedded worker of ``app``, which runs in embedded mode."""
        embedded = self.embedded_worker_or_none(app)
        assert embedded is not None, "the app names a broker: no embedded worker"
        return embedded

    def stop_embedded_worker(self, app: Flask) -> None:
        """Stop ``app``'s embedded worker, if it has one (at the end of a test)."""
        embedded = self.embedded_worker_or_none(app)
        if embedded is not None:
            embedded.stop()


#: The one :class:`Internals`, for the tests' helper functions outside fixtures.
INTERNALS = Internals()


@pytest.fixture(scope="session")
def internals() -> Internals:
    """What the extension keeps for any app (:class:`Internals`)."""
    return INTERNALS


@pytest.fixture
def make_app(tmp_path: Path, internals: Internals) -> Iterator[AppFactory]:
    """Build apps with their own SQLite file, eager Celery and any config overrides.

    ``extension=`` is the :class:`AsyncRequest` to initialise on the app, for a
    test that uses it as an app's own module would (a new one otherwise).
    """
    counter = itertools.count()
    made: list[Flask] = []

    def factory(
        create_tables: bool = True, *, extension: AsyncRequest | None = None, **config: Any
    ) -> Flask:
        app = Flask(__name__)
        app.config.update(
            TESTING=True,
            SECRET_KEY=SECRET,
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/app{next(counter)}.db",
            CELERY={"task_always_eager": True},
            # The tests' callback receivers listen on 127.0.0.1.
            ASYNC_REQUEST_CALLBACK_ALLOW_PRIVATE=True,
        )
        app.config.update(config)
        db = SQLAlchemy()
        db.init_app(app)
        (extension or AsyncRequest()).init_app(app)
        if create_tables:
            with app.app_context():
                db.create_all()
        made.append(app)
        return app

    yield factory
    for app in made:
        internals.stop_embedded_worker(app)
        with app.app_context():
            app.extensions["sqlalchemy"].engine.dispose()


#: The PostgreSQL database of the tests that need one.
PG_DATABASE_URL = os.environ.get(
    "FAR_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture
def pg_app(make_app: AppFactory, internals: Internals) -> Iterator[Flask]:
    """An app on PostgreSQL with eager Celery and a fresh jobs table."""
    app = make_app(create_tables=False, SQLALCHEMY_DATABASE_URI=PG_DATABASE_URL)
    with app.app_context():
        db = app.extensions["sqlalchemy"]
        db.drop_all()
        db.create_all()
        yield app
        db.session.remove()
        internals.job_store(app).dispose()


@pytest.fixture
def extension() -> AsyncRequest:
    """The :class:`AsyncRequest` of the ``app`` fixture, as the app's own module holds it."""
    return AsyncRequest()


@pytest.fixture
def app(make_app: AppFactory, extension: AsyncRequest) -> Iterator[Flask]:
    """An app on SQLite with eager Celery, inside an app context."""
    app = make_app(extension=extension)
    with app.app_context():
        yield app


@pytest.fixture
def db(app: Flask) -> SQLAlchemy:
    """The Flask-SQLAlchemy extension of the ``app`` fixture."""
    sqlalchemy: SQLAlchemy = app.extensions["sqlalchemy"]
    return sqlalchemy


@pytest.fixture
def session(db: SQLAlchemy) -> scoped_session[Any]:
    """The Flask-SQLAlchemy session of the ``app`` fixture."""
    return db.session


@pytest.fixture
def engine(db: SQLAlchemy) -> Engine:
    """The database engine of the ``app`` fixture."""
    return db.engine


@pytest.fixture
def celery_app(app: Flask) -> Celery:
    """The Celery app of the ``app`` fixture, where the Flask docs' recipe keeps it."""
    celery: Celery = app.extensions["celery"]
    return celery


@pytest.fixture
def process_task(celery_app: Celery) -> Task[Any, Any]:
    """The Celery task that runs a job, as the ``app`` fixture registered it."""
    task: Task[Any, Any] = celery_app.tasks[PROCESS_TASK]
    return task


@pytest.fixture
def job_store(app: Flask, internals: Internals) -> JobStore:
    """The job store of the ``app`` fixture in this process."""
    return internals.job_store(app)


@pytest.fixture
def async_settings(app: Flask, internals: Internals) -> Settings:
    """The settings the ``app`` fixture's extension read from its config."""
    return internals.settings(app)


@pytest.fixture
def verify_token(app: Flask, internals: Internals) -> TokenVerifier:
    """Verifies the ``app`` fixture's tokens as its status endpoint does."""
    return internals.verify_token(app)


@pytest.fixture
def client(app: Flask) -> Any:
    return app.test_client()


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """Serve the WSGI ``app`` on 127.0.0.1 in a thread; yields its base url."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    assert isinstance(server, ThreadedWSGIServer)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        # Ended before the next test starts, which may count the threads it starts.
        thread.join()
        server.server_close()


@pytest.fixture
def served_example(tmp_path: Path, internals: Internals) -> Iterator[str]:
    """The example app on the embedded default, served on 127.0.0.1; yields its base url."""
    from example.app import create_app

    app = create_app({"SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/example.db"})
    try:
        with serving(app) as base:
            yield base
    finally:
        internals.stop_embedded_worker(app)


def current_db() -> SQLAlchemy:
    """The Flask-SQLAlchemy extension of the current app."""
    db: SQLAlchemy = current_app.extensions["sqlalchemy"]
    return db


def add_job(
    worker: str = "tests.workers:Echo",
    status: JobStatus = JobStatus.WAITING,
    *,
    args: list[Any] | None = None,
    status_code: int | None = None,
    response: str | None = None,
    finished_at: datetime | None = None,
) -> Job:
    """Insert a job row directly, without publishing it (needs an app context)."""
    session = current_db().session
    job = Job(
        worker=worker,
        params={"args": args or [], "kwargs": {}},
        status=status,
        status_code=status_code,
        response=response,
        finished_at=finished_at,
    )
    session.add(job)
    session.commit()
    return job


def poll(client: Any, token: str, header: str = "X-JOB-AUTHORIZATION") -> Any:
    """GET the status endpoint with ``Bearer <token>``."""
    return client.get("/async_request/job", headers={header: f"Bearer {token}"})


def reload_job(job_id: int) -> Job:
    """Job ``job_id`` as the database has it now (needs an app context)."""
    session = current_db().session
    session.expire_all()
    job = session.get(Job, job_id)
    assert job is not None
    return job


def json_of(response: TestResponse) -> Any:
    """The JSON body of a test client's ``response``; fails the test if it has none."""
    body = response.json
    assert body is not None, response.data[:200]
    return body


#: The header the result url reads a job's token from.
TOKEN_HEADER = "X-JOB-AUTHORIZATION"


def chunk_count(job_id: int | None = None) -> int:
    """The result store's chunks in the database, of job ``job_id`` or of all jobs."""
    query = sa.select(sa.func.count()).select_from(ResultChunk)
    if job_id is not None:
        query = query.where(ResultChunk.job_id == job_id)
    session = current_db().session
    count = int(session.execute(query).scalar_one())
    session.commit()
    return count


def poll_finished(client: Any, token: str) -> dict[str, Any]:
    """The JSON body of a finished job's poll; fails the test unless it answers 200."""
    answer = poll(client, token)
    assert answer.status_code == 200, answer.data[:300]
    body: dict[str, Any] = json_of(answer)
    return body


def download_result(client: Any, token: str, **headers: str) -> Any:
    """GET the result url with ``token`` in its header and any other ``headers``."""
    return client.get("/async_request/result", headers={TOKEN_HEADER: token, **headers})


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> int:
    """Chunks of 1000 bytes, so a short result spans several."""
    monkeypatch.setattr(results, "CHUNK_SIZE", 1000)
    return 1000


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Escape lone surrogates in a report's captured output.

    The hostile-value tests make the library log text holding lone surrogates;
    pytest-xdist sends each report to the controller as UTF-8, which cannot
    carry them, and the whole run would stop on it.
    """
    outcome: Any = yield
    report = outcome.get_result()
    report.sections = [
        (title, content.encode("utf-8", "backslashreplace").decode("utf-8"))
        for title, content in report.sections
    ]


@pytest.fixture(scope="session")
def s3_server_session() -> Iterator[S3Server]:
    """moto's S3 server on loopback, one for the session (skipped without moto)."""
    yield from serve()


@pytest.fixture
def s3_server(s3_server_session: S3Server) -> Iterator[S3Server]:
    """The S3 server, its bucket emptied after the test."""
    yield s3_server_session
    s3_server_session.empty()


class Receiver:
    """An HTTP server on loopback that records the callbacks it gets."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.calls: list[tuple[bytes, dict[str, str]]] = []
        receiver = Flask("receiver")

        @receiver.post("/hook")
        def hook() -> Any:
            self.calls.append((request.get_data(), dict(request.headers)))
            return "", self.status

        self.server = make_server("127.0.0.1", 0, receiver, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int = 1, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count:
            assert time.monotonic() < deadline, "no callback arrived"
            time.sleep(0.02)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.server.shutdown()


def job_calling(url: str, status: JobStatus = JobStatus.PROCESSED) -> int:
    """A job ended ``status`` whose callback url is ``url``."""
    job = add_job(status=status, status_code=200, response="ok")
    job.callback_url = url
    current_db().session.commit()
    return job.id


@pytest.fixture
def dash(make_app: AppFactory) -> Flask:
    """An app with the dashboard open to every request (and no app context pushed)."""
    from tests.dashboards import open_dashboard

    return open_dashboard(make_app)
