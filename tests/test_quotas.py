"""The statements of the per-owner limits: each database's form, and the owners' locks."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy.dialects import mysql, postgresql, sqlite

from flask_async_request import quotas

DIALECTS: dict[str, Any] = {
    "postgresql": postgresql.dialect(),  # type: ignore[no-untyped-call]
    "mariadb": mysql.dialect(is_mariadb=True),
    "sqlite": sqlite.dialect(),
}


def _sql(statement: Any, dialect: str) -> str:
    return str(statement.compile(dialect=DIALECTS[dialect]))


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_counts_come_from_derived_tables(dialect: str) -> None:
    """The conditional INSERT and the capped claim count in derived tables, not in a subquery
    of the table they write, which MariaDB and MySQL refuse."""
    admit = _sql(quotas.ADMIT, dialect)
    assert admit.startswith("INSERT INTO async_request_jobs")
    assert "AS in_flight" in admit and "AS recent" in admit
    claim = _sql(quotas.CLAIM_CAPPED.update, dialect)
    assert claim.startswith("UPDATE async_request_jobs")
    assert "AS running" in claim


@pytest.mark.parametrize("dialect", DIALECTS)
def test_the_parked_jobs_are_those_due_after_their_creation(dialect: str) -> None:
    """A parked job is told by its row alone: waiting, no attempt, due after its creation."""
    sql = _sql(quotas.NEXT_PARKED, dialect)
    assert "due_at > async_request_jobs.created_at" in sql
    assert "attempts =" in sql


def test_each_database_has_its_lock() -> None:
    """PostgreSQL's advisory locks, MariaDB's and MySQL's named locks, none on SQLite."""
    pg = quotas.owner_lock("postgresql")
    assert "pg_advisory_xact_lock" in _sql(pg.in_transaction, "postgresql")
    assert "pg_advisory_lock" in _sql(pg.acquire, "postgresql")
    assert "pg_advisory_unlock" in _sql(pg.release, "postgresql")
    maria = quotas.owner_lock("mariadb")
    assert maria.in_transaction is None
    assert "get_lock" in _sql(maria.acquire, "mariadb").lower()
    assert "release_lock" in _sql(maria.release, "mariadb").lower()
    assert quotas.owner_lock("mysql") == maria
    assert quotas.owner_lock("sqlite") == (None, None, None)


def test_lock_params_fit_each_database_and_differ_by_purpose() -> None:
    """A signed 64-bit key and a name of 64 characters at most, whatever the owner."""
    long_owner = "ü" * 255
    admit = quotas.lock_params("admit", long_owner)
    run = quotas.lock_params("run", long_owner)
    assert -(2**63) <= admit["lock_key"] < 2**63
    assert len(admit["lock_name"]) <= 64
    assert admit != run
    assert quotas.lock_params("admit", long_owner) == admit
