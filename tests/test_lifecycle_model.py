"""The lifecycle's model-based test on SQLite (see :mod:`tests.lifecycle_model`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from tests.conftest import Internals
from tests.lifecycle_model import LifecycleMachine, make_app


@pytest.fixture(scope="module")
def sqlite_machine(
    tmp_path_factory: pytest.TempPathFactory, internals: Internals
) -> type[LifecycleMachine]:
    path: Path = tmp_path_factory.mktemp("model") / "jobs.db"

    class SQLiteLifecycle(LifecycleMachine):
        app = make_app(f"sqlite:///{path}")
        job_store_of = internals.job_store

    return SQLiteLifecycle


def test_lifecycle_matches_its_model_on_sqlite(sqlite_machine: type[LifecycleMachine]) -> None:
    """Random interleavings of every transition keep the table equal to the reference model."""
    machine = settings(
        max_examples=150,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )(sqlite_machine)
    machine.TestCase().runTest()
