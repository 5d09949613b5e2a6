"""`flask async-request init` with Flask-Migrate, run as a user would: `flask` in a subprocess."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa

from flask_async_request.revisions import (
    COLUMN_STEPS,
    HOT_INDEXES,
    OWNER_INDEXES,
    OWNER_LIMITS,
    RESULT_COMPRESSION,
    RESULT_LOCATION,
    RESULT_STORE,
    STEPS,
    Step,
)

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get(
    "FAR_TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)

PROJECT = textwrap.dedent(
    """
    import os
    from flask import Flask
    from flask_migrate import Migrate
    from flask_sqlalchemy import SQLAlchemy
    from flask_async_request import AsyncRequest

    db = SQLAlchemy()

    def create_app():
        app = Flask(__name__)
        app.config.update(
            SECRET_KEY="migrations-test-secret-key-long-enough-for-hmac-sha256-use",
            SQLALCHEMY_DATABASE_URI=os.environ["DATABASE_URL"],
            CELERY={"broker_url": "redis://127.0.0.1:6379/15"},
        )
        db.init_app(app)
        if not os.environ.get("NO_MIGRATE"):
            Migrate(app, db)
        AsyncRequest(app)
        return app
    """
)


def flask(project: Path, url: str, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `flask --app project ...` in the project folder; return its output, fail on error."""
    environment = dict(os.environ, DATABASE_URL=url, **(env or {}))
    environment["PYTHONPATH"] = os.pathsep.join([str(project), str(ROOT)])
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "project:create_app", *args],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "project.py").write_text(PROJECT)
    return tmp_path


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, or a PostgreSQL database made for this test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/app.db"
        return
    name = f"far_migrations_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")
    try:
        yield sa.make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.dispose()


def _versions(project: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in (project / "migrations" / "versions").glob("*.py")}


def test_init_upgrade_then_migrate_finds_no_change(project: Path, database_url: str) -> None:
    """init, then db upgrade creates the table; a second init and db migrate change nothing."""
    output = flask(project, database_url, "async-request", "init")
    assert "Created the migrations folder" in output
    assert "Wrote the jobs table revision" in output
    assert (project / "async_request_settings.py").exists()
    first = _versions(project)
    assert len(first) == 1

    again = flask(project, database_url, "async-request", "init")
    assert "exists already, left as is" in again
    assert _versions(project) == first

    flask(project, database_url, "db", "upgrade")
    engine = sa.create_engine(database_url)
    try:
        inspector = sa.inspect(engine)
        assert "async_request_jobs" in inspector.get_table_names()
    finally:
        engine.dispose()
    # On PostgreSQL, the chunks of stored results are compressed with lz4.
    assert _schema(database_url)["compression"] == (
        "l" if database_url.startswith("postgresql") else None
    )

    migrate = flask(project, database_url, "db", "migrate", "-m", "check")
    assert "No changes in schema detected" in migrate
    assert "Detected added" not in migrate
    assert "Detected removed" not in migrate
    assert not [n for n in _versions(project) if "check" in n]


def test_revision_goes_after_the_current_head(project: Path, tmp_path: Path) -> None:
    """In an app with migrations already, the new revision revises the current head."""
    url = f"sqlite:///{tmp_path}/app.db"
    flask(project, url, "db", "init")
    flask(project, url, "db", "revision", "-m", "first", "--rev-id", "aaa111")
    flask(project, url, "async-request", "init")
    created = [text for name, text in _versions(project).items() if "aaa111" not in name]
    assert len(created) == 1
    assert "down_revision = 'aaa111'" in created[0]


def test_autogenerated_table_is_not_written_twice(project: Path, tmp_path: Path) -> None:
    """If the app's own autogenerate already created the tables, init writes them no revision.

    Autogenerate knows no compression: init writes the step that sets it, alone.
    """
    url = f"sqlite:///{tmp_path}/app.db"
    flask(project, url, "db", "init")
    flask(project, url, "db", "migrate", "-m", "everything")
    before = _versions(project)
    output = flask(project, url, "async-request", "init")
    assert "exists already" in output
    added = {name: text for name, text in _versions(project).items() if name not in before}
    assert [step for text in added.values() for step in STEPS if step.made_in(text)] == [
        RESULT_COMPRESSION
    ]
    assert f"Wrote {RESULT_COMPRESSION.wrote}" in output


def test_force_rewrites_the_settings_snippet(project: Path, tmp_path: Path) -> None:
    """The snippet survives a second init, and --force rewrites it."""
    url = f"sqlite:///{tmp_path}/app.db"
    flask(project, url, "async-request", "init")
    snippet = project / "async_request_settings.py"
    snippet.write_text("# mine\n")
    flask(project, url, "async-request", "init")
    assert snippet.read_text() == "# mine\n"
    flask(project, url, "async-request", "init", "--force")
    text = snippet.read_text()
    assert "# ASYNC_REQUEST_SIGN_ALGORITHM = 'HS256'" in text
    assert "# ASYNC_REQUEST_JOBS_EXPIRATION = timedelta(days=1)" in text


def test_settings_snippet_is_valid_python_with_every_key() -> None:
    """The snippet lists every setting and, uncommented, loads as the defaults."""
    from flask_async_request.config import DEFAULTS, SETTINGS
    from flask_async_request.migrations import config_snippet

    text = config_snippet()
    for key in SETTINGS:
        assert f"# {key} = " in text
    uncommented = "\n".join(
        line[2:] if line.startswith("# ASYNC_REQUEST_") else line for line in text.splitlines()
    )
    namespace: dict[str, object] = {}
    exec(compile(uncommented, "snippet", "exec"), namespace)
    assert {k: namespace[k] for k in DEFAULTS} == DEFAULTS


def test_init_without_flask_migrate_explains(project: Path, tmp_path: Path) -> None:
    """An app without Flask-Migrate gets an Error line that says what to add."""
    environment = dict(
        os.environ,
        DATABASE_URL=f"sqlite:///{tmp_path}/app.db",
        NO_MIGRATE="1",
        PYTHONPATH=os.pathsep.join([str(project), str(ROOT)]),
    )
    result = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "project:create_app", "async-request", "init"],
        cwd=project,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("Error: Flask-Migrate is not set up on this app")
    assert "Traceback" not in result.stderr


def _with_index_on_status(text: str) -> str:
    """A jobs-table revision as ``init`` wrote it while the table had an index on (status, id)."""
    kept = []
    for line in text.splitlines():
        if "unfinished_id" in line or "fillfactor" in line:
            continue
        if "ix_async_request_jobs_finished_at" in line:
            line = re.sub(r", postgresql_where=.*\)$", ")", line)
            kept.append(line)
            line = line.replace("_finished_at", "_status_id").replace(
                "['finished_at']", "['status', 'id']"
            )
        kept.append(line)
    return "\n".join(kept) + "\n"


def _indexes(url: str) -> dict[str, tuple[Any, ...]]:
    engine = sa.create_engine(url)
    try:
        found = sa.inspect(engine).get_indexes("async_request_jobs")
        options = None
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn:
                options = conn.exec_driver_sql(
                    "SELECT reloptions FROM pg_class WHERE relname = 'async_request_jobs'"
                ).scalar()
    finally:
        engine.dispose()
    indexes: dict[str, tuple[Any, ...]] = {
        # A partial index's WHERE: text on PostgreSQL, a TextClause on SQLite.
        str(i["name"]): (
            tuple(i["column_names"]),
            sorted((key, str(value)) for key, value in i.get("dialect_options", {}).items()),
        )
        for i in found
    }
    indexes["(table options)"] = (options,)
    return indexes


def _created_by_the_model(url: str, tmp_path: Path) -> dict[str, tuple[Any, ...]]:
    """The indexes of a jobs table the model creates, in a new database like ``url``'s."""
    from flask_async_request.models import Job

    fresh = sa.make_url(url)
    admin = None
    if fresh.drivername.startswith("sqlite"):
        fresh = fresh.set(database=str(tmp_path / "fresh.db"))
    else:
        fresh = fresh.set(database=f"{fresh.database}_fresh")
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {fresh.database}")
    try:
        engine = sa.create_engine(fresh)
        cast(sa.Table, Job.__table__).create(engine)
        engine.dispose()
        return _indexes(fresh.render_as_string(hide_password=False))
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {fresh.database} WITH (FORCE)")
            admin.dispose()


def _revision_id(text: str, field: str = "revision") -> str:
    """The revision id (or ``down_revision``) a revision's ``text`` declares."""
    found = re.search(rf"^{field} = '(\w+)'", text, re.M)
    assert found is not None, field
    return found.group(1)


def _chain(project: Path, first: str) -> list[str]:
    """The texts of the revisions after ``first``, in the one line of history they make."""
    revises = {
        t: re.search(r"^down_revision = '(\w+)'", t, re.M) for t in _versions(project).values()
    }
    after = {found.group(1): t for t, found in revises.items() if found is not None}
    chain, parent = [], first
    while parent in after:
        chain.append(after[parent])
        parent = _revision_id(after[parent])
    return chain


def _schema(url: str) -> dict[str, Any]:
    """The tables' columns, the jobs table's indexes and options, the chunks' compression."""
    engine = sa.create_engine(url)
    compression = None
    try:
        inspector = sa.inspect(engine)
        tables = {
            name: sorted(str(c["name"]) for c in inspector.get_columns(name))
            for name in inspector.get_table_names()
            if name.startswith("async_request_")
        }
        if engine.dialect.name == "postgresql" and "async_request_results" in tables:
            with engine.connect() as conn:
                compression = conn.exec_driver_sql(
                    "SELECT attcompression FROM pg_attribute WHERE attname = 'data'"
                    " AND attrelid = 'async_request_results'::regclass"
                ).scalar()
    finally:
        engine.dispose()
    return {"tables": tables, "indexes": _indexes(url), "compression": compression}


def _upgrade_then_back(project: Path, url: str, first: str) -> dict[str, Any]:
    """Upgrade to the head, which ``db migrate`` finds the model's, then downgrade to ``first``.

    Returns the schema at the head; asserts the downgrade gives back the schema at ``first``.
    """
    before = _schema(url)
    flask(project, url, "db", "upgrade")
    upgraded = _schema(url)
    migrate = flask(project, url, "db", "migrate", "-m", "check")
    assert "No changes in schema detected" in migrate
    assert not [n for n in _versions(project) if "check" in n]
    flask(project, url, "db", "downgrade", first)
    assert _schema(url) == before
    return upgraded


def test_table_with_index_on_status_gets_a_revision_to_the_models_indexes(
    project: Path, database_url: str, tmp_path: Path
) -> None:
    """A table created with the (status, id) index: init writes the revision to the model's indexes.

    Upgraded, the table has the indexes (and on PostgreSQL the fillfactor) of a
    table the model creates, db migrate finds no change, and a downgrade brings
    back the index on status.
    """
    flask(project, database_url, "async-request", "init")
    [(name, text)] = _versions(project).items()
    (project / "migrations" / "versions" / name).write_text(_with_index_on_status(text))
    flask(project, database_url, "db", "upgrade")
    before = _indexes(database_url)
    assert "ix_async_request_jobs_status_id" in before

    output = flask(project, database_url, "async-request", "init")
    assert f"Wrote {HOT_INDEXES.wrote}" in output
    assert len(_versions(project)) == 2
    again = flask(project, database_url, "async-request", "init")
    assert "new indexes" not in again
    assert len(_versions(project)) == 2

    upgraded = _upgrade_then_back(project, database_url, _revision_id(text))
    assert upgraded["indexes"] == _created_by_the_model(database_url, tmp_path)
    assert upgraded["indexes"] != before


def _run_revision(engine: sa.Engine, code: str) -> None:
    """Run the body of a revision's upgrade() or downgrade(), as Alembic would."""
    from alembic.operations import Operations
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy.dialects import mysql

    with engine.begin() as conn:
        op = Operations(MigrationContext.configure(conn))
        namespace: dict[str, object] = {"op": op, "sa": sa, "mysql": mysql}
        exec(compile(f"def run():\n    {code}\n", "revision", "exec"), namespace)
        runner: Any = namespace["run"]
        runner()


def _differences(engine: sa.Engine, metadata: sa.MetaData) -> list[Any]:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), metadata))


@pytest.mark.parametrize("step", STEPS, ids=[step.message for step in STEPS])
def test_a_step_takes_an_earlier_table_to_the_model_and_back(step: Step, database_url: str) -> None:
    """Each step's upgrade takes the table before it to the model's, and its downgrade back.

    The table before it is the model's downgraded by the step: without the
    columns the step adds, and different from the model's.
    """
    from flask_async_request.models import Job, ResultChunk

    model = sa.MetaData()
    for table in (cast(sa.Table, Job.__table__), cast(sa.Table, ResultChunk.__table__)):
        table.to_metadata(model)
    upgrade, downgrade = step.code()
    engine = sa.create_engine(database_url)
    try:
        model.create_all(engine)
        made = _schema(database_url)
        _run_revision(engine, downgrade)
        earlier = _schema(database_url)
        assert not set(step.columns) & set(earlier["tables"][Job.__tablename__])
        # Only PostgreSQL has a compression to set: elsewhere its step changes nothing.
        unchanged = step is RESULT_COMPRESSION and engine.dialect.name != "postgresql"
        assert (earlier == made) is unchanged
        _run_revision(engine, upgrade)
        assert _differences(engine, model) == []
        upgraded = _schema(database_url)
        if step is RESULT_STORE:
            # The table it creates is compressed by the compression's step, after it.
            del upgraded["compression"], made["compression"]
        assert upgraded == made
        _run_revision(engine, downgrade)
        assert _schema(database_url) == earlier
    finally:
        engine.dispose()


@pytest.mark.integration
def test_the_compression_step_leaves_mariadb_as_it_was() -> None:
    """On MariaDB the compression's upgrade and downgrade run and change no table."""
    from flask_async_request.models import Job, ResultChunk

    url = os.environ.get("FAR_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
    model = sa.MetaData()
    for table in (cast(sa.Table, Job.__table__), cast(sa.Table, ResultChunk.__table__)):
        table.to_metadata(model)
    engine = sa.create_engine(url)

    def tables() -> list[str]:
        with engine.connect() as conn:
            return [
                conn.exec_driver_sql(f"SHOW CREATE TABLE {name}").one()[1] for name in model.tables
            ]

    try:
        model.drop_all(engine)
        model.create_all(engine)
        made = tables()
        assert not [table for table in made if "COMPRESS" in table.upper()]
        upgrade, downgrade = RESULT_COMPRESSION.code()
        _run_revision(engine, upgrade)
        assert tables() == made
        _run_revision(engine, downgrade)
        assert tables() == made
    finally:
        model.drop_all(engine)
        engine.dispose()


OLD_REVISION = '''"""create async_request_jobs, before the result store

Revision ID: before01
Revises:
Create Date: 2024-01-01 00:00:00

"""
from alembic import op
import sqlalchemy as sa

revision = 'before01'
down_revision = None
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('async_request_jobs', sa.Column('id', sa.Integer(), nullable=False))


def downgrade():
    op.drop_table('async_request_jobs')
'''


def test_init_writes_every_step_for_a_history_made_before_them(
    project: Path, tmp_path: Path
) -> None:
    """A history whose jobs revision predates every step gets them all, in one line, once."""
    url = f"sqlite:///{tmp_path}/app.db"
    flask(project, url, "db", "init")
    (project / "migrations" / "versions" / "before01_create.py").write_text(OLD_REVISION)
    output = flask(project, url, "async-request", "init")
    assert "The jobs table revision exists already" in output
    chain = _chain(project, "before01")
    assert len(chain) == len(_versions(project)) - 1 == len(STEPS)
    for text, step in zip(chain, STEPS, strict=True):
        assert text.count(f"# {step.marker}\n") == 2
        assert "from sqlalchemy.dialects import mysql" in text
        assert f"Wrote {step.wrote}: " in output
        assert f"Next: run `flask db upgrade` to {step.upgrade}." in output
    assert "create_table('async_request_results'" in chain[STEPS.index(RESULT_STORE)]
    again = flask(project, url, "async-request", "init")
    assert "Wrote " not in again
    assert len(_versions(project)) == 1 + len(STEPS)


def test_a_new_table_needs_no_step(project: Path, tmp_path: Path) -> None:
    """init on a new app writes the table with every column, and no step's revision."""
    url = f"sqlite:///{tmp_path}/app.db"
    output = flask(project, url, "async-request", "init")
    assert not [step for step in STEPS if step.wrote in output]
    [created] = _versions(project).values()
    assert "sa.Column('trace_context'" in created


def _as_before(text: str, step: Step) -> str:
    """The creating revision's ``text`` as an earlier init wrote it, before ``step``."""
    for column in step.columns:
        text, count = re.subn(rf"^ *sa\.Column\('{column}'.*\n", "", text, flags=re.M)
        assert count == 1, column
    if step is OWNER_LIMITS:
        for index in OWNER_INDEXES:
            text, count = re.subn(
                rf"^ *op\.(create|drop)_index\('{index}'.*\n", "", text, flags=re.M
            )
            assert count == 2, index
    if step is RESULT_COMPRESSION:
        text, count = re.subn(r"^.*SET COMPRESSION lz4.*\n", "", text, flags=re.M)
        assert count == 1
    return text


#: Tables an earlier init created, by the first step they lack: each lacks the later ones too.
EARLIER_TABLES = (RESULT_LOCATION, COLUMN_STEPS[0], OWNER_LIMITS)


@pytest.mark.parametrize("first", EARLIER_TABLES, ids=[step.message for step in EARLIER_TABLES])
def test_init_after_an_earlier_init_adds_one_line_of_revisions(
    project: Path, database_url: str, first: Step
) -> None:
    """An app upgraded with an earlier init's table gets what it lacks in order, after its head.

    Upgraded, the database is the model's (``db migrate`` finds no change);
    downgraded to the app's revision, it is the earlier table again.
    """
    missing = STEPS[STEPS.index(first) :]
    flask(project, database_url, "async-request", "init")
    [path] = (project / "migrations" / "versions").glob("*.py")
    text = path.read_text()
    for step in missing:
        text = _as_before(text, step)
    path.write_text(text)
    flask(project, database_url, "db", "upgrade")

    output = flask(project, database_url, "async-request", "init")
    assert "exists already" in output
    assert [step for step in STEPS if f"Wrote {step.wrote}" in output] == list(missing)
    chain = _chain(project, _revision_id(text))
    assert [step for text in chain for step in STEPS if step.made_in(text)] == list(missing)

    added = {column for step in missing for column in step.columns}
    before = _schema(database_url)
    assert not added & set(before["tables"]["async_request_jobs"])
    assert not set(OWNER_INDEXES) & set(before["indexes"])
    upgraded = _upgrade_then_back(project, database_url, _revision_id(text))
    assert set(upgraded["tables"]["async_request_jobs"]) == (
        set(before["tables"]["async_request_jobs"]) | added
    )
    assert set(OWNER_INDEXES) <= set(upgraded["indexes"])
    assert upgraded["compression"] == ("l" if database_url.startswith("postgresql") else None)
