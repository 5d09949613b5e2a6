"""The lifecycle's model-based test on PostgreSQL, NOTIFYs included."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

from tests.conftest import Internals
from tests.lifecycle_model import LifecycleMachine, make_app

pytestmark = pytest.mark.integration

DATABASE_URL = os.environ.get(
    "FAR_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def test_lifecycle_matches_its_model_on_postgresql(internals: Internals) -> None:
    """Random interleavings keep the table equal to the model; every end NOTIFYs once."""

    class PostgresLifecycle(LifecycleMachine):
        app = make_app(DATABASE_URL)
        job_store_of = internals.job_store

    # Kept well under the tests' timeout on a busy machine: a timeout raised inside
    # Hypothesis counts as a failure to shrink, which replays the slow examples.
    machine = settings(
        max_examples=40,
        stateful_step_count=40,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )(PostgresLifecycle)
    try:
        machine.TestCase().runTest()
    finally:
        with PostgresLifecycle.app.app_context():
            internals.job_store(PostgresLifecycle.app).dispose()
            PostgresLifecycle.app.extensions["sqlalchemy"].engine.dispose()
