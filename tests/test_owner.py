"""Owner binding: a job created by one identity answers only that identity."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from flask import Flask, request, url_for

from flask_async_request import AsyncRequest, Job
from tests import workers
from tests.conftest import SECRET, AppFactory, current_db, json_of


@pytest.fixture
def owned_app(make_app: AppFactory) -> Flask:
    """An app whose identity is the X-User header, with a view that starts a job."""
    extension = AsyncRequest()
    app = make_app(extension=extension)

    @extension.identity_loader
    def current_user() -> str | None:
        return request.headers.get("X-User")

    @app.post("/start")
    def start() -> Any:
        job = Job.create_and_enqueue(workers.Echo, "secret")
        return {"token": job.token, "url": url_for("async_request.job")}, 202

    return app


def _poll(app: Flask, token: str, user: str | None) -> int:
    headers = {"X-JOB-AUTHORIZATION": f"Bearer {token}"}
    if user is not None:
        headers["X-User"] = user
    return app.test_client().get("/async_request/job", headers=headers).status_code


def test_owner_is_stored_and_signed(owned_app: Flask) -> None:
    """The identity is stored on the job and carried in the token's sub claim."""
    token = json_of(owned_app.test_client().post("/start", headers={"X-User": "alice"}))["token"]
    assert jwt.decode(token, SECRET, algorithms=["HS256"])["sub"] == "alice"
    with owned_app.app_context():
        assert current_db().session.query(Job).one().owner == "alice"


def test_owner_reads_the_job(owned_app: Flask) -> None:
    """The identity that created the job reads it."""
    token = json_of(owned_app.test_client().post("/start", headers={"X-User": "alice"}))["token"]
    assert _poll(owned_app, token, "alice") == 200


@pytest.mark.parametrize("other", ["bob", None, ""])
def test_other_identity_gets_404(owned_app: Flask, other: str | None) -> None:
    """Another identity, or none, is told the job does not exist."""
    token = json_of(owned_app.test_client().post("/start", headers={"X-User": "alice"}))["token"]
    assert _poll(owned_app, token, other) == 404


def test_job_without_owner_is_readable_by_any_identity(owned_app: Flask) -> None:
    """A job created with no identity stays readable with its token alone."""
    token = json_of(owned_app.test_client().post("/start"))["token"]
    assert _poll(owned_app, token, "bob") == 200
    assert _poll(owned_app, token, None) == 200


def test_token_for_another_owner_gets_404(owned_app: Flask) -> None:
    """A token whose sub differs from the row's owner does not read the row."""
    token = json_of(owned_app.test_client().post("/start", headers={"X-User": "alice"}))["token"]
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    claims["sub"] = "mallory"
    forged = jwt.encode(claims, SECRET, algorithm="HS256")
    assert _poll(owned_app, forged, "mallory") == 404
    assert _poll(owned_app, forged, "alice") == 404


def test_identity_loader_returns_the_function(make_app: AppFactory) -> None:
    """The decorator leaves the function usable."""
    extension = AsyncRequest()
    make_app(extension=extension)

    def loader() -> str:
        return "x"

    assert extension.identity_loader(loader) is loader
