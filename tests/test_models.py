"""The Job model, its JobStatus, and the model's small functions on times, text and floats."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask
from sqlalchemy.orm import Session

from flask_async_request.models import (
    TABLE_NAME,
    Job,
    JobStatus,
    ResultChunk,
    column_length,
    results_compression,
)
from flask_async_request.values import (
    as_utc,
    utcnow,
)
from tests import workers

# JobStatus ------------------------------------------------------------------------------------


def test_job_status_values_are_the_stored_lowercase_names() -> None:
    """Each status is stored, answered and printed as its lowercase value."""
    assert [status.value for status in JobStatus] == [
        "waiting",
        "processing",
        "processed",
        "failed",
        "cancelled",
    ]
    for status in JobStatus:
        assert str(status) == status.value
        assert f"{status}" == status.value
        assert status == status.value
        assert JobStatus(status.value) is status


@pytest.mark.parametrize(
    ("status", "finished"),
    [
        (JobStatus.WAITING, False),
        (JobStatus.PROCESSING, False),
        (JobStatus.PROCESSED, True),
        (JobStatus.FAILED, True),
        (JobStatus.CANCELLED, True),
    ],
)
def test_finished_is_true_for_the_end_states_only(status: JobStatus, finished: bool) -> None:
    """Processed, failed and cancelled jobs are finished; waiting and processing ones are not."""
    assert status.finished is finished


# The table ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "length"),
    [
        ("uid", 32),
        ("worker", 255),
        ("status", 16),
        ("owner", 255),
        ("idempotency_scope", 64),
        ("callback_url", 2048),
        ("response", None),
        ("id", None),
    ],
)
def test_column_length(name: str, length: int | None) -> None:
    """The most characters a column holds, or None where it has no set size."""
    assert column_length(name) == length


def test_the_table_and_its_indexes_are_named_for_the_library() -> None:
    """One table, async_request_jobs, with its indexes named after it."""
    assert Job.__tablename__ == TABLE_NAME == "async_request_jobs"
    table = Job.__table__
    assert isinstance(table, sa.Table)
    indexes = {index.name for index in table.indexes}
    assert {
        "ix_async_request_jobs_unfinished_id",
        "ix_async_request_jobs_worker_id",
        "ix_async_request_jobs_created_at",
        "ix_async_request_jobs_finished_at",
    } <= indexes
    # A claim changes the status: an index on it would make every claim write
    # index entries (no HOT update on PostgreSQL).
    assert not any("status" in index.name for index in table.indexes if index.name)


@pytest.fixture
def session(app: Flask) -> Iterator[Session]:
    """The app's database session."""
    db = app.extensions["sqlalchemy"]
    yield db.session
    db.session.rollback()


def test_a_new_row_gets_its_defaults(session: Session) -> None:
    """uid, waiting, no attempts, and its creation, update and due times, all set on insert."""
    before = utcnow()
    job = Job(worker="tests.workers:Echo", params={"args": [], "kwargs": {}})
    session.add(job)
    session.commit()
    assert re.fullmatch("[0-9a-f]{32}", job.uid)
    assert job.status is JobStatus.WAITING
    assert job.attempts == 0
    for moment in (job.created_at, job.updated_at, job.due_at):
        assert before <= as_utc(moment) <= utcnow()
    assert (job.started_at, job.finished_at, job.status_code, job.response) == (
        None,
        None,
        None,
        None,
    )


def test_the_status_is_stored_as_its_value(session: Session) -> None:
    """The column holds "processing", which any SQL (or another language) reads."""
    session.add(Job(worker="w", params={}, status=JobStatus.PROCESSING))
    session.commit()
    stored = session.execute(sa.text(f"SELECT status FROM {TABLE_NAME}")).scalar_one()
    assert stored == "processing"


def test_a_status_that_is_no_job_status_is_refused(session: Session) -> None:
    """A string no JobStatus has is refused before it reaches the table."""
    with pytest.raises(sa.exc.StatementError):
        session.execute(sa.insert(Job).values(worker="w", params={}, status="finished"))


def test_args_and_kwargs_come_from_the_params() -> None:
    """The params hold the positional and keyword arguments; a missing part is empty."""
    job = Job(params={"args": [1, [2]], "kwargs": {"a": {"b": 3}}})
    assert (job.args, job.kwargs) == ([1, [2]], {"a": {"b": 3}})
    bare = Job(params={})
    assert (bare.args, bare.kwargs) == ([], {})


def test_args_and_kwargs_are_copies() -> None:
    """Changing the lists and dicts handed out leaves the stored params alone."""
    job = Job(params={"args": [1], "kwargs": {"a": 1}})
    job.args.append(2)
    job.kwargs["b"] = 2
    assert job.params == {"args": [1], "kwargs": {"a": 1}}


def test_repr_names_the_job_its_worker_and_its_status() -> None:
    """<Job id worker status>."""
    job = Job(id=3, worker="tests.workers:Echo", status=JobStatus.FAILED)
    assert repr(job) == "<Job 3 tests.workers:Echo failed>"


# What the model asks of the extension ---------------------------------------------------------


class Gateway:
    """Stands for the extension: records what the model asks of it."""

    def __init__(self) -> None:
        self.created: list[tuple[Any, ...]] = []
        self.signed: list[Job] = []

    def create_job(
        self,
        worker_class: type,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        commit: bool,
        idempotency_key: str | None,
        callback_url: str | None,
    ) -> Job:
        self.created.append((worker_class, args, kwargs, commit, idempotency_key, callback_url))
        return Job(id=len(self.created))

    def sign_token(self, job: Job) -> str:
        self.signed.append(job)
        return f"token-{len(self.signed)}"


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> Gateway:
    """The model's gateway replaced, for this test only."""
    fake = Gateway()
    monkeypatch.setattr(Job, "__async_request__", fake)
    return fake


def test_create_and_enqueue_takes_the_librarys_keywords_and_passes_the_rest(
    gateway: Gateway,
) -> None:
    """commit, idempotency_key and callback_url are the library's; other keywords go to execute."""
    Job.create_and_enqueue(
        workers.Echo, 1, "two", commit=False, idempotency_key="k", callback_url="https://x/", a=3
    )
    assert gateway.created == [
        (workers.Echo, (1, "two"), {"a": 3}, False, "k", "https://x/"),
    ]


def test_create_and_enqueue_defaults_to_committing(gateway: Gateway) -> None:
    """Without the library's keywords the job is committed, with no key and no callback."""
    Job.create_and_enqueue(workers.Echo)
    assert gateway.created == [(workers.Echo, (), {}, True, None, None)]


def test_enqueue_call_passes_execute_the_library_s_keyword_names(gateway: Gateway) -> None:
    """enqueue_call's kwargs go to execute whole, even one named commit."""
    Job.enqueue_call(workers.Echo, [1], {"commit": "yes"}, idempotency_key="k")
    Job.enqueue_call(workers.Echo)
    assert gateway.created == [
        (workers.Echo, [1], {"commit": "yes"}, True, "k", None),
        (workers.Echo, (), {}, True, None, None),
    ]


def test_a_token_is_signed_on_first_use_and_kept(gateway: Gateway) -> None:
    """Job.token asks for a signature once; later reads give the same token."""
    job = Job(id=1)
    assert job.token == "token-1"
    assert job.token == "token-1"
    assert gateway.signed == [job]


def test_a_kept_token_needs_no_signature(gateway: Gateway) -> None:
    """A token kept with keep_token is the job's token; nothing is signed."""
    job = Job(id=1)
    job.keep_token("signed-at-creation")
    assert job.token == "signed-at-creation"
    assert gateway.signed == []


def test_the_token_is_kept_out_of_the_columns(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token read survives the commit that expires the row's columns."""
    gateway = Gateway()
    # Set after the app's init_app, which gives the model its own gateway.
    monkeypatch.setattr(Job, "__async_request__", gateway)
    job = Job(worker="w", params={})
    session.add(job)
    session.commit()
    token = job.token
    session.commit()
    assert job.token == token
    assert len(gateway.signed) == 1


def test_without_init_app_the_model_says_how_to_fix_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Creating a job or signing a token before init_app is a RuntimeError naming init_app."""
    monkeypatch.setattr(Job, "__async_request__", None)
    with pytest.raises(RuntimeError, match=r"call async_request\.init_app\(app\)"):
        Job.create_and_enqueue(workers.Echo)
    with pytest.raises(RuntimeError, match=r"call async_request\.init_app\(app\)"):
        Job(id=1).token  # noqa: B018


def test_params_round_trip_through_the_table(session: Session) -> None:
    """The JSON column gives back the nested params it was given."""
    params = {"args": [1, 2.5, None, True, "é"], "kwargs": {"a": {"b": []}}}
    job = Job(worker="w", params=params)
    session.add(job)
    session.commit()
    session.expire_all()
    assert session.get(Job, job.id).params == params  # type: ignore[union-attr]
    raw = session.execute(sa.text(f"SELECT params FROM {TABLE_NAME}")).scalar_one()
    assert json.loads(raw) == params


def test_create_all_sets_no_compression_but_on_postgresql(tmp_path: Path) -> None:
    """On SQLite the tables are created with no statement of PostgreSQL's compression."""
    engine = sa.create_engine(f"sqlite:///{tmp_path}/tables.db")
    statements: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: statements.append(str(args[2])))
    try:
        metadata = sa.MetaData()
        for table in (Job.__table__, ResultChunk.__table__):
            cast(sa.Table, table).to_metadata(metadata)
        metadata.create_all(engine)
    finally:
        engine.dispose()
    assert any("CREATE TABLE async_request_results" in s for s in statements)
    assert not [s for s in statements if "COMPRESSION" in s or "fillfactor" in s]


def test_the_compression_statement_runs_only_where_the_server_has_lz4() -> None:
    """The statement asks the server for lz4 and sets it by EXECUTE, so older servers skip it."""
    statement = results_compression("lz4")
    assert statement.startswith("DO $$ BEGIN IF EXISTS (SELECT FROM pg_settings")
    assert "'lz4' = ANY(enumvals)" in statement
    assert (
        "EXECUTE 'ALTER TABLE async_request_results ALTER COLUMN data SET COMPRESSION lz4'"
        in statement
    )
