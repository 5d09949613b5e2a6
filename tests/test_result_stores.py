"""Which store holds a result, and which leftovers of a store the purge deletes."""

from __future__ import annotations

from pathlib import Path

import pytest
from flask import Flask

from flask_async_request import JobStatus
from flask_async_request.directory import DirectoryStore
from flask_async_request.result_stores import configured, locate, stale
from flask_async_request.results import DatabaseStore
from flask_async_request.storage import Leftover, ResultMissing
from tests.conftest import AppFactory

LOCATION = "file:///r/5-2"


def _leftover(attempt: int = 2, *, complete: bool = True) -> Leftover:
    return Leftover(LOCATION, 5, attempt, 7200.0, complete)


@pytest.mark.parametrize(
    ("leftover", "job", "expected"),
    [
        (_leftover(), None, True),
        (_leftover(), (JobStatus.PROCESSED, 2, LOCATION), False),
        (_leftover(complete=False), (JobStatus.PROCESSED, 2, LOCATION), True),
        (_leftover(), (JobStatus.PROCESSED, 2, "file:///r/5-3"), True),
        (_leftover(), (JobStatus.FAILED, 2, None), True),
        (_leftover(), (JobStatus.CANCELLED, 2, None), True),
        (_leftover(), (JobStatus.WAITING, 2, None), True),
        (_leftover(3), (JobStatus.WAITING, 2, None), False),
        (_leftover(), (JobStatus.PROCESSING, 2, None), False),
        (_leftover(1), (JobStatus.PROCESSING, 2, None), True),
    ],
)
def test_stale(
    leftover: Leftover, job: tuple[JobStatus, int, str | None] | None, expected: bool
) -> None:
    """As the database's chunks: a leftover is no job's result, nor will be."""
    assert stale(leftover, job) is expected


def test_locations_are_found_whatever_the_setting(app: Flask, tmp_path: Path) -> None:
    """No location is the database; a file url its directory; anything else is missing."""
    assert isinstance(configured(), DatabaseStore)
    store, location = locate(4, 2, None)
    assert isinstance(store, DatabaseStore) and location == "db:4-2"
    store, location = locate(4, 2, (tmp_path / "4-2").as_uri())
    assert store == DirectoryStore(tmp_path)
    for location in ("gopher://x/4-2", "s3://", "s3:///4-2"):
        with pytest.raises(ResultMissing):
            locate(4, 2, location)


def test_the_apps_own_store_serves_its_locations(make_app: AppFactory, tmp_path: Path) -> None:
    """A location of the configured store is served by that very object (its options)."""
    mine = DirectoryStore(tmp_path, mode=0o600)
    app = make_app(ASYNC_REQUEST_RESULT_STORE=mine)
    with app.app_context():
        assert locate(1, 1, (tmp_path / "1-1").as_uri()).store is mine
        assert configured() is mine
