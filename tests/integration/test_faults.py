"""Faults in the services, with the real PostgreSQL driver."""

from __future__ import annotations

import jwt
import pytest

from tests.conftest import SECRET, AppFactory, poll

pytestmark = pytest.mark.integration


def test_postgres_down_while_polling_answers_503(make_app: AppFactory) -> None:
    """A PostgreSQL that refuses connections gives 503 with Retry-After, not a traceback."""
    app = make_app(
        create_tables=False,
        SQLALCHEMY_DATABASE_URI="postgresql+psycopg://postgres@127.0.0.1:1/test",
        SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"connect_timeout": 2}},
    )
    token = jwt.encode({"job_id": 1, "jti": "u" * 32, "exp": 4102444800}, SECRET, "HS256")
    response = poll(app.test_client(), token)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json == {
        "errors": [{"message": "The job store is unavailable; try again later."}]
    }
