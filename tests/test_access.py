"""The checks the status url, the result url and the download link share."""

from __future__ import annotations

import ast
import dataclasses
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from flask import Flask

from flask_async_request import JobStatus
from flask_async_request.access import (
    Refusal,
    check_same_job,
    database_errors,
    job_for_request,
    job_url_enabled,
    link_url,
    result_url,
)
from flask_async_request.exceptions import DatabaseUnavailable, InvalidJobRow
from flask_async_request.links import LinkClaims, verify_link
from flask_async_request.state import get_state
from tests.conftest import AppFactory, add_job

PACKAGE = Path(__file__).resolve().parents[1] / "flask_async_request"


def _status(refusal: Refusal) -> int:
    status: int = refusal.response[1]
    return status


def test_a_missing_token_is_refused_with_400(app: Flask) -> None:
    """No token in the header: a 400 refusal, as the status url answers."""
    with app.test_request_context("/"), pytest.raises(Refusal) as caught:
        job_for_request()
    assert _status(caught.value) == 400


def test_a_token_in_the_path_names_its_job(app: Flask) -> None:
    """A good token given as the path's: its claims and its job's row."""
    job = add_job()
    with app.test_request_context("/"):
        claims, reply = job_for_request(job.token)
    assert claims.job_id == job.id
    assert reply.uid == job.uid
    assert reply.status is JobStatus.WAITING


def test_an_over_long_token_is_refused_before_it_is_verified(app: Flask) -> None:
    """A path token past the longest a token can be: 400."""
    with app.test_request_context("/"), pytest.raises(Refusal) as caught:
        job_for_request("x" * 100_000)
    assert _status(caught.value) == 400


def test_another_job_with_the_same_id_is_not_found(app: Flask) -> None:
    """A row whose uid is not the token's is another job: 404."""
    job = add_job()
    claims = get_state().verify_token(job.token)
    reply = get_state().store().fetch_reply(job.id)
    assert reply is not None
    with pytest.raises(Refusal) as caught:
        check_same_job(dataclasses.replace(claims, uid="other"), reply)
    assert _status(caught.value) == 404
    with pytest.raises(Refusal):
        check_same_job(claims, None)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (DatabaseUnavailable("gone"), 503),
        (
            sqlalchemy.exc.OperationalError("SELECT", {}, Exception(), connection_invalidated=True),
            503,
        ),
        (InvalidJobRow("bad row", 1), 409),
        (sqlalchemy.exc.TimeoutError("QueuePool limit of size 5 overflow 10 reached"), 503),
    ],
)
def test_database_errors_become_refusals(app: Flask, error: Exception, status: int) -> None:
    """A database out of reach (or no connection of the pool free) is a 503, a corrupt row a 409."""
    with app.test_request_context("/"), pytest.raises(Refusal) as caught, database_errors():
        raise error
    assert _status(caught.value) == status


def test_other_database_errors_are_not_hidden(app: Flask) -> None:
    """A database error that is not a lost connection goes on as it is."""
    error = sqlalchemy.exc.ProgrammingError("SELECT", {}, Exception())
    with pytest.raises(sqlalchemy.exc.ProgrammingError), database_errors():
        raise error


def test_job_urls_off_refuse_with_404(make_app: AppFactory) -> None:
    """With ASYNC_REQUEST_TOKEN_IN_URL off, a job's own url is a 404."""
    app = make_app(ASYNC_REQUEST_TOKEN_IN_URL=False)
    with app.test_request_context("/"), pytest.raises(Refusal) as caught:
        job_url_enabled()
    assert _status(caught.value) == 404


def test_result_url_is_the_jobs_own_or_the_shared_one(app: Flask) -> None:
    """With a token: the job's own result url; without: the shared one."""
    with app.test_request_context("/", base_url="http://app.example"):
        assert result_url("abc") == "http://app.example/async_request/job/abc/result"
        assert result_url(None) == "http://app.example/async_request/result"


def test_link_url_signs_the_claims_for_its_lifetime(app: Flask) -> None:
    """A link on the request's origin whose signed part gives the claims back."""
    claims = LinkClaims(7, "uid", "ab" * 32, None)
    with app.test_request_context("/", base_url="http://app.example"):
        url = link_url(claims, timedelta(minutes=2))
    prefix = "http://app.example/async_request/download/"
    assert url.startswith(prefix)
    assert verify_link(get_state().settings, url[len(prefix) :]) == claims


@pytest.mark.parametrize("expires_in", [0, 0.5, -3, True, "60", timedelta(0)])
def test_link_url_refuses_a_lifetime_under_a_second(app: Flask, expires_in: Any) -> None:
    """A lifetime that is not one second or more is a ValueError that says so."""
    with app.test_request_context("/"), pytest.raises(ValueError, match="expires_in"):
        link_url(LinkClaims(1, "u", "0" * 64, None), expires_in)


def test_no_module_imports_another_modules_private_names() -> None:
    """The package's modules share only public names: nothing imports a ``_name`` of another."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                private = [a.name for a in node.names if a.name.startswith("_")]
                if private and node.module not in (None, "__future__"):
                    found.append(f"{path.relative_to(PACKAGE)}: {node.module} {private}")
    assert found == []


def test_the_row_is_read_as_stored_now(app: Flask) -> None:
    """job_for_request reads the job's row as it is stored now."""
    row = add_job(status=JobStatus.PROCESSED, status_code=200, response="done")
    with app.test_request_context("/"):
        _, reply = job_for_request(row.token)
    assert reply.status is JobStatus.PROCESSED
    assert reply.response == "done"
