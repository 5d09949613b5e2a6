"""pytest_plugin: the plugin pytest loads by itself and its async_jobs fixture, in projects."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest_plugins = ["pytester"]

#: A project's app, as its tests would build it: no broker, an eager Celery.
PROJECT = """
import json
from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_async_request import AsyncRequest, Job, JobStatus, Worker, accepted


class Double(Worker):
    def execute(self, number: int) -> tuple[int, str]:
        return 200, json.dumps(number * 2)


def make_app(path: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SECRET_KEY="a-secret-key-long-enough-for-hs256-and-then-some",
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{path}",
        CELERY={"task_always_eager": True},
    )
    db = SQLAlchemy(app)
    AsyncRequest(app)
    with app.app_context():
        db.create_all()

    @app.post("/double/<int:number>")
    def double(number: int) -> Any:
        return accepted(Job.create_and_enqueue(Double, number))

    return app
"""


def _project(pytester: pytest.Pytester, tests: str, *, app_scope: str = "function") -> None:
    """A project whose conftest builds the app above as its ``app`` fixture, and its tests."""
    fixture = f'''
@pytest.fixture(scope="{app_scope}")
def app(tmp_path_factory: Any) -> Flask:
    return make_app(tmp_path_factory.mktemp("db") / "app.db")
'''
    pytester.makeconftest(PROJECT + fixture)
    pytester.makepyfile(textwrap.dedent(tests))


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:randomly", *args)


def test_the_plugin_is_registered_under_its_name(pytester: pytest.Pytester) -> None:
    """pytest loads the plugin by its entry point, named flask_async_request."""
    pytester.makepyfile(
        """
        import flask_async_request.pytest_plugin as plugin

        def test_loaded(request):
            manager = request.config.pluginmanager
            assert manager.get_plugin("flask_async_request") is plugin
        """
    )
    _run(pytester).assert_outcomes(passed=1)


def test_the_plugin_can_be_turned_off(pytester: pytest.Pytester) -> None:
    """With -p no:flask_async_request there is no async_jobs fixture."""
    _project(pytester, "def test_it(async_jobs):\n    pass\n")
    result = _run(pytester, "-p", "no:flask_async_request")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'async_jobs' not found*"])


def test_the_plugin_leaves_projects_without_an_app_alone(pytester: pytest.Pytester) -> None:
    """A project with no app fixture, which asks for none of its fixtures, runs as before."""
    pytester.makepyfile("def test_ok():\n    assert True\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)


def test_the_plugin_loads_without_the_server_stack() -> None:
    """Loading the plugin, as pytest does at start-up, imports none of the server stack."""
    code = (
        "import sys, flask_async_request.pytest_plugin\n"
        "loaded = {m.split('.')[0] for m in sys.modules} | set(sys.modules)\n"
        "print(sorted(loaded & {'flask', 'celery', 'sqlalchemy', 'flask_async_request.testing'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_async_jobs_needs_an_app_fixture(pytester: pytest.Pytester) -> None:
    """Asking for async_jobs without an app fixture names the missing fixture."""
    pytester.makepyfile("def test_it(async_jobs):\n    pass\n")
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*fixture 'app' not found*"])


def test_async_jobs_holds_the_app_s_jobs_until_run(pytester: pytest.Pytester) -> None:
    """The fixture is a JobRunner of the app fixture: jobs wait for it, then run and answer."""
    _project(
        pytester,
        """
        from flask_async_request import JobStatus
        from flask_async_request.testing import JobRunner

        def test_double(app, async_jobs):
            assert isinstance(async_jobs, JobRunner)
            client = app.test_client()
            started = client.post("/double/21")
            assert started.status_code == 202
            # Though Celery is eager, the job waits for the runner.
            assert client.get(started.json["url"]).json["status"] == "waiting"
            assert [run.status for run in async_jobs.run_pending()] == [JobStatus.PROCESSED]
            assert client.get(started.json["url"]).json["response"]["body"] == "42"

        def test_wait_for(app, async_jobs):
            client = app.test_client()
            result = async_jobs.wait_for(client.post("/double/5"), client=client)
            assert result.ok and result.body == "10"
        """,
    )
    _run(pytester).assert_outcomes(passed=2)


def test_async_jobs_lets_go_of_the_app_after_each_test(pytester: pytest.Pytester) -> None:
    """Each test has its own runner: what one left unrun is dropped; then the app is eager again."""
    _project(
        pytester,
        """
        from flask_async_request import Job, JobStatus
        from conftest import Double

        def test_leaves_a_job(app, async_jobs):
            with app.app_context():
                Job.create_and_enqueue(Double, 1)
            assert len(async_jobs.pending) == 1

        def test_its_own_runner(app, async_jobs):
            assert async_jobs.pending == []

        def test_without_the_fixture_celery_is_eager_again(app):
            with app.app_context():
                assert Job.create_and_enqueue(Double, 2).status is JobStatus.PROCESSED
        """,
        app_scope="module",
    )
    _run(pytester).assert_outcomes(passed=3)
