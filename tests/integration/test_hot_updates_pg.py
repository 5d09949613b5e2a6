"""The jobs table on a real PostgreSQL: a claim is a HOT update, and the indexes are the model's."""

from __future__ import annotations

import time
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flask import Flask

from flask_async_request import Job
from flask_async_request.models import FILLFACTOR, TABLE_NAME
from tests import workers
from tests.conftest import INTERNALS

pytestmark = pytest.mark.integration

#: The columns a claim sets (``statements.CLAIM``): none may be in an index, nor in
#: an index's WHERE, or the claim cannot be a HOT update.
CLAIMED = {"status", "started_at", "updated_at", "lease_expires_at", "attempts"}

_COUNTERS = sa.text(
    "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relname = :table"
)


def _counters(engine: sa.Engine) -> tuple[int, int]:
    """The table's UPDATEs and HOT UPDATEs, as the statistics hold them now."""
    with engine.connect() as conn:
        conn.exec_driver_sql("SELECT pg_stat_clear_snapshot()")
        updates, hot = conn.execute(_COUNTERS, {"table": TABLE_NAME}).one()
    return int(updates), int(hot)


def _flush_statistics(app: Flask) -> None:
    """Have the app's connections hand their counters in: a backend does as it ends."""
    INTERNALS.job_store(app).dispose()
    INTERNALS.db(app).engine.dispose()


def test_claim_is_a_hot_update(pg_app: Flask) -> None:
    """Each job's claim is a HOT update: n_tup_hot_upd grows by one per job run."""
    engine = sa.create_engine(pg_app.config["SQLALCHEMY_DATABASE_URI"], poolclass=sa.pool.NullPool)
    jobs = 40
    try:
        _flush_statistics(pg_app)
        # A backend that ends sends its counters as it goes, a moment after the
        # connection is closed on this side.
        time.sleep(0.5)
        updates_before, hot_before = _counters(engine)
        for number in range(jobs):
            Job.create_and_enqueue(workers.Echo, number)
        _flush_statistics(pg_app)
        deadline = time.monotonic() + 10
        while (counters := _counters(engine))[0] - updates_before < 2 * jobs:
            assert time.monotonic() < deadline, counters
            time.sleep(0.1)
        updates, hot = counters[0] - updates_before, counters[1] - hot_before
    finally:
        engine.dispose()
    # A claim and a finish per job; the finish sets finished_at, which is indexed.
    assert updates == 2 * jobs
    assert hot >= jobs, (updates, hot)


def test_no_index_holds_a_column_the_claim_sets(pg_app: Flask) -> None:
    """No index names a claimed column, in its key or its WHERE, and the fillfactor is set."""
    db = INTERNALS.db(pg_app)
    with db.engine.connect() as conn:
        definitions: dict[str, str] = dict(
            conn.execute(
                sa.text("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = :table"),
                {"table": TABLE_NAME},
            ).all()
        )
        options = conn.execute(
            sa.text("SELECT reloptions FROM pg_class WHERE relname = :table"),
            {"table": TABLE_NAME},
        ).scalar()
    for name, definition in definitions.items():
        named = set(definition.replace("(", " ").replace(")", " ").replace(",", " ").split())
        assert not named & CLAIMED, (name, definition)
    assert options == [f"fillfactor={FILLFACTOR}"]


def test_indexes_are_the_models(pg_app: Flask) -> None:
    """The table's indexes are those of the model, partial ones with the model's WHERE."""
    db = INTERNALS.db(pg_app)
    reflected = {
        index["name"]: (
            tuple(index["column_names"]),
            index["unique"],
            index.get("dialect_options", {}).get("postgresql_where"),
        )
        for index in sa.inspect(db.engine).get_indexes(TABLE_NAME)
        if not index.get("duplicates_constraint")
    }
    table = cast(sa.Table, Job.__table__)

    def where(index: sa.Index) -> Any:
        clause = index.dialect_options["postgresql"]["where"]
        return None if clause is None else f"({clause})"

    expected = {
        str(index.name): (
            tuple(column.name for column in index.columns),
            bool(index.unique),
            where(index),
        )
        for index in table.indexes
    }
    assert reflected == expected
