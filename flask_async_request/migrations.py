"""Scaffolding for an app: the Alembic revision of the jobs table and a config snippet."""

from __future__ import annotations

import dataclasses
import textwrap
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa
from alembic.autogenerate import render_python_code
from alembic.operations import ops
from alembic.script import ScriptDirectory

from .config import SETTINGS, default_source
from .exceptions import AsyncRequestError
from .models import FILLFACTOR, RESULTS_TABLE_NAME, TABLE_NAME, Job, ResultChunk

if TYPE_CHECKING:
    from flask import Flask

#: Written into the revision, so a second ``init`` finds it.
MARKER = f"flask-async-request: create {TABLE_NAME}"
REVISION_MESSAGE = f"create {TABLE_NAME}"
#: Written into the revision that adds the result store to a jobs table made before it.
RESULTS_MARKER = f"flask-async-request: create {RESULTS_TABLE_NAME}"
RESULTS_REVISION_MESSAGE = f"create {RESULTS_TABLE_NAME}"
#: The jobs table's columns that came with the result store.
RESULT_COLUMNS = ("headers", "result_size", "result_sha256")

#: Written into the revision that records where each stored result is.
LOCATION_MARKER = f"flask-async-request: {TABLE_NAME} result_location"
LOCATION_MESSAGE = f"{TABLE_NAME} result_location"
#: The jobs table's column that came with the directory and object stores.
LOCATION_COLUMN = "result_location"

#: Written into the revision that moves a table created with an index on status
#: to the indexes of HOT updates, so a second ``init`` finds it.
HOT_MARKER = f"flask-async-request: {TABLE_NAME} indexes for HOT updates"
HOT_MESSAGE = f"{TABLE_NAME} indexes for HOT updates"
#: The index that only a table with the indexes of HOT updates has.
_HOT_INDEX = f"ix_{TABLE_NAME}_unfinished_id"
#: The indexes of a table created before, in place of those the model has by their names.
_INDEXES_BEFORE = (
    ops.CreateIndexOp(f"ix_{TABLE_NAME}_finished_at", TABLE_NAME, ["finished_at"]),
    ops.CreateIndexOp(f"ix_{TABLE_NAME}_status_id", TABLE_NAME, ["status", "id"]),
)
#: Written into the revision that adds the indexes of the per-owner limits.
OWNER_MARKER = f"flask-async-request: {TABLE_NAME} indexes of the owner limits"
OWNER_MESSAGE = f"{TABLE_NAME} indexes of the owner limits"
#: The indexes the per-owner limits read, by name.
OWNER_INDEXES = (f"ix_{TABLE_NAME}_owner_created_at", f"ix_{TABLE_NAME}_owner_unfinished")
_END = "    # ### end Alembic commands ###"


@dataclasses.dataclass(frozen=True)
class ColumnsRevision:
    """Columns added to the jobs table after it was first made, by a revision of their own."""

    #: Written into the revision, so a second ``init`` finds it.
    marker: str
    #: The revision's message.
    message: str
    #: The columns it adds, in their order.
    columns: tuple[str, ...]
    #: What ``init`` says it wrote ("Wrote the revision of ...").
    what: str


#: The revisions that add columns to a jobs table made before them, oldest first.
COLUMN_REVISIONS = (
    ColumnsRevision(
        f"flask-async-request: {TABLE_NAME} trace context",
        f"{TABLE_NAME} trace context",
        ("trace_context",),
        "the jobs' trace context",
    ),
    ColumnsRevision(
        f"flask-async-request: {TABLE_NAME} callback delivery log",
        f"{TABLE_NAME} callback delivery log",
        ("callback_deliveries",),
        "the callbacks' delivery log",
    ),
    ColumnsRevision(
        f"flask-async-request: {TABLE_NAME} traceback",
        f"{TABLE_NAME} traceback",
        ("traceback",),
        "the failed jobs' tracebacks",
    ),
)


@dataclasses.dataclass(frozen=True)
class InitResult:
    """What :func:`init_app_files` did."""

    migrations_created: bool
    revision: Path
    revision_written: bool
    config: Path
    config_written: bool
    #: The revision written to move a table created with an index on status to the
    #: indexes of HOT updates, if one was.
    hot_revision: Path | None = None
    #: The revision written to add the result store to a jobs table made before it.
    results_revision: Path | None = None
    #: The revision written to add ``result_location`` to a jobs table made before it.
    location_revision: Path | None = None
    #: The revisions written to add columns to a jobs table made before them
    #: (see :data:`COLUMN_REVISIONS`), with what each adds.
    column_revisions: tuple[tuple[str, Path], ...] = ()
    #: The revision written to add the indexes of the owner limits, if one was.
    owner_revision: Path | None = None


def config_snippet() -> str:
    """A Python config file listing every setting, its meaning and its default, commented."""
    lines = [
        "# flask-async-request settings. Uncomment and change what you need, then load this",
        "# file with app.config.from_pyfile(...). A broker for production, for example:",
        '# CELERY = {"broker_url": "redis://127.0.0.1:6379/0"}',
        "",
        "from datetime import timedelta  # noqa: F401",
        "",
    ]
    for key, setting in SETTINGS.items():
        # The meanings are reST, whose double backquotes would read oddly in a comment.
        meaning = setting.meaning.replace("``", "`")
        lines += [f"# {line}" for line in textwrap.wrap(meaning, width=86)]
        lines += [f"# {key} = {default_source(setting.default)}", ""]
    return "\n".join(lines)


def _marked(code: str, marker: str) -> str:
    """Alembic's rendered ``code``, its first line the ``marker`` a second ``init`` looks for."""
    first, _, rest = code.partition("\n")
    return f"# {marker}\n{rest}" if first.startswith("# ###") else f"# {marker}\n    {code}"


def _fillfactor(code: str, statement: str) -> str:
    """``code`` with ``statement`` run on PostgreSQL at its end: no Alembic operation sets it."""
    run = (
        '    if op.get_context().dialect.name == "postgresql":\n'
        f'        op.execute("{statement}")\n'
    )
    return code.replace(_END, run + _END)


def _revision_code() -> tuple[str, str]:
    """The upgrade and downgrade of the revision that creates the jobs and results tables."""
    tables = [cast(sa.Table, Job.__table__), cast(sa.Table, ResultChunk.__table__)]
    upgrade = render_python_code(
        ops.UpgradeOps(
            ops=[
                op
                for table in tables
                for op in (
                    ops.CreateTableOp.from_table(table),
                    *(ops.CreateIndexOp.from_index(index) for index in _indexes(table)),
                )
            ]
        )
    )
    downgrade = render_python_code(
        ops.DowngradeOps(
            ops=[
                op
                for table in reversed(tables)
                for op in (
                    *(ops.DropIndexOp.from_index(index) for index in _indexes(table)),
                    ops.DropTableOp.from_table(table),
                )
            ]
        )
    )
    set_fillfactor = f"ALTER TABLE {TABLE_NAME} SET (fillfactor = {FILLFACTOR})"
    return _fillfactor(_marked(upgrade, MARKER), set_fillfactor), _marked(downgrade, MARKER)


def _hot_revision_code() -> tuple[str, str]:
    """The revision that moves a table created with an index on status to the model's indexes.

    The index on ``(status, id)`` made every change of status, a claim's too,
    write a new entry into every index; ``finished_at``'s now leaves out the jobs
    not finished, and a new one holds those by id.
    """
    table = cast(sa.Table, Job.__table__)
    after = {str(index.name): index for index in table.indexes}
    changed = [after[f"ix_{TABLE_NAME}_finished_at"], after[_HOT_INDEX]]
    upgrade = render_python_code(
        ops.UpgradeOps(
            ops=[
                *(before.reverse() for before in _INDEXES_BEFORE),
                *(ops.CreateIndexOp.from_index(index) for index in changed),
            ]
        )
    )
    downgrade = render_python_code(
        ops.DowngradeOps(
            ops=[*(ops.DropIndexOp.from_index(index) for index in changed), *_INDEXES_BEFORE]
        )
    )
    set_fillfactor = f"ALTER TABLE {TABLE_NAME} SET (fillfactor = {FILLFACTOR})"
    reset_fillfactor = f"ALTER TABLE {TABLE_NAME} RESET (fillfactor)"
    return (
        _fillfactor(_marked(upgrade, HOT_MARKER), set_fillfactor),
        _fillfactor(_marked(downgrade, HOT_MARKER), reset_fillfactor),
    )


def owner_revision_code() -> tuple[str, str]:
    """The upgrade and downgrade that add the indexes of the per-owner limits."""
    table = cast(sa.Table, Job.__table__)
    added = [index for index in _indexes(table) if index.name in OWNER_INDEXES]
    upgrade = render_python_code(
        ops.UpgradeOps(ops=[ops.CreateIndexOp.from_index(index) for index in added])
    )
    downgrade = render_python_code(
        ops.DowngradeOps(ops=[ops.DropIndexOp.from_index(index) for index in reversed(added)])
    )
    return _marked(upgrade, OWNER_MARKER), _marked(downgrade, OWNER_MARKER)


def _has_owner_indexes(script: ScriptDirectory) -> bool:
    """Whether a revision gives the jobs table the indexes of the owner limits."""
    for revision in script.walk_revisions():
        if revision.path is not None and OWNER_INDEXES[0] in Path(revision.path).read_text("utf-8"):
            return True
    return False


def _indexes(table: sa.Table) -> list[sa.Index]:
    return sorted(table.indexes, key=lambda index: str(index.name))


def _detached(table: sa.Table, name: str) -> sa.Column[Any]:
    """Column ``name`` of ``table`` as a new column, in no table yet (nullable, no default)."""
    column = table.c[name]
    return sa.Column(name, column.type, nullable=column.nullable)


def results_revision_code() -> tuple[str, str]:
    """The upgrade and downgrade that add the result store to a jobs table made before it.

    The jobs table gains the reply's kept headers and a stored result's size and
    checksum; the results table is created.
    """
    jobs = cast(sa.Table, Job.__table__)
    results = cast(sa.Table, ResultChunk.__table__)
    upgrade = render_python_code(
        ops.UpgradeOps(
            ops=[
                *(
                    ops.AddColumnOp.from_column_and_tablename(
                        None, TABLE_NAME, _detached(jobs, name)
                    )
                    for name in RESULT_COLUMNS
                ),
                ops.CreateTableOp.from_table(results),
            ]
        )
    )
    downgrade = render_python_code(
        ops.DowngradeOps(
            ops=[
                ops.DropTableOp.from_table(results),
                *(
                    ops.DropColumnOp.from_column_and_tablename(
                        None, TABLE_NAME, _detached(jobs, name)
                    )
                    for name in reversed(RESULT_COLUMNS)
                ),
            ]
        )
    )
    return _marked(upgrade, RESULTS_MARKER), _marked(downgrade, RESULTS_MARKER)


def columns_revision_code(revision: ColumnsRevision) -> tuple[str, str]:
    """The upgrade and downgrade that add ``revision``'s columns to a jobs table made before."""
    jobs = cast(sa.Table, Job.__table__)
    upgrade = render_python_code(
        ops.UpgradeOps(
            ops=[
                ops.AddColumnOp.from_column_and_tablename(None, TABLE_NAME, _detached(jobs, name))
                for name in revision.columns
            ]
        )
    )
    downgrade = render_python_code(
        ops.DowngradeOps(
            ops=[
                ops.DropColumnOp.from_column_and_tablename(None, TABLE_NAME, _detached(jobs, name))
                for name in reversed(revision.columns)
            ]
        )
    )
    return _marked(upgrade, revision.marker), _marked(downgrade, revision.marker)


def _has_columns(script: ScriptDirectory, revision: ColumnsRevision) -> bool:
    """Whether a revision adds ``revision``'s columns, or creates the table with them."""
    column = revision.columns[0]
    named = (f"sa.Column('{column}'", f'sa.Column("{column}"')
    for written in script.walk_revisions():
        if written.path is None:
            continue
        text = Path(written.path).read_text(encoding="utf-8")
        if revision.marker in text or any(n in text for n in named):
            return True
    return False


def location_revision_code() -> tuple[str, str]:
    """The upgrade and downgrade that add ``result_location`` to a jobs table made before it.

    Its rows keep ``NULL``: their stored results are in the database's table.
    """
    column = _detached(cast(sa.Table, Job.__table__), LOCATION_COLUMN)
    upgrade = render_python_code(
        ops.UpgradeOps(ops=[ops.AddColumnOp.from_column_and_tablename(None, TABLE_NAME, column)])
    )
    downgrade = render_python_code(
        ops.DowngradeOps(ops=[ops.DropColumnOp.from_column_and_tablename(None, TABLE_NAME, column)])
    )
    return _marked(upgrade, LOCATION_MARKER), _marked(downgrade, LOCATION_MARKER)


def _has_location(script: ScriptDirectory) -> bool:
    """Whether a revision gives the jobs table its ``result_location`` (creating it or later)."""
    for revision in script.walk_revisions():
        if revision.path is not None and LOCATION_COLUMN in Path(revision.path).read_text("utf-8"):
            return True
    return False


def _existing_revision(
    script: ScriptDirectory, table: str = TABLE_NAME, marker: str = MARKER
) -> Path | None:
    """The revision that already creates ``table``, written by ``init`` or autogenerate."""
    creates = (f"create_table('{table}'", f'create_table("{table}"')
    for revision in script.walk_revisions():
        if revision.path is None:
            continue
        text = Path(revision.path).read_text(encoding="utf-8")
        if marker in text or any(c in text for c in creates):
            return Path(revision.path)
    return None


def _has_hot_indexes(script: ScriptDirectory) -> bool:
    """Whether a revision gives the jobs table the indexes of HOT updates (creating it or later)."""
    for revision in script.walk_revisions():
        if revision.path is not None and _HOT_INDEX in Path(revision.path).read_text("utf-8"):
            return True
    return False


def _single_head(script: ScriptDirectory) -> None:
    heads = script.get_heads()
    if len(heads) > 1:
        raise AsyncRequestError(
            f"The migration history has several heads ({', '.join(heads)}); merge them with"
            " `flask db merge heads`, then run this command again."
        )


def init_app_files(app: Flask, config_path: Path, *, force: bool = False) -> InitResult:
    """Write the jobs-table revision and the config snippet; safe to run again.

    Runs inside an app context. The revision goes into the app's Flask-Migrate
    ``versions`` folder (made with ``flask db init`` when missing), after the
    current head; a revision that already creates the table is left alone. The
    config snippet is written unless it exists, or always with ``force``.

    :raises AsyncRequestError: Flask-Migrate is not set up, or the history has several heads.
    """
    migrate = app.extensions.get("migrate")
    if migrate is None:
        raise AsyncRequestError(
            "Flask-Migrate is not set up on this app; add `Migrate(app, db)` (from flask_migrate"
            " import Migrate) to the app factory and run this command again."
        )
    directory = Path(migrate.directory)
    migrations_created = False
    if not (directory / "env.py").exists():
        import flask_migrate

        flask_migrate.init(str(directory))
        migrations_created = True
    script = ScriptDirectory.from_config(migrate.migrate.get_config(str(directory)))

    revision = _existing_revision(script)
    revision_written = False
    hot_revision = results_revision = location_revision = owner_revision = None
    if revision is None:
        revision = _generate(script, REVISION_MESSAGE, *_revision_code())
        revision_written = True
    else:
        if not _has_hot_indexes(script):
            # A table created with an index on status: its revision and the indexes it
            # made are the app's own history, so the change comes as a revision after them.
            hot_revision = _generate(script, HOT_MESSAGE, *_hot_revision_code())
        if _existing_revision(script, RESULTS_TABLE_NAME, RESULTS_MARKER) is None:
            # A jobs table made before the result store: the revision that adds it.
            results_revision = _generate(script, RESULTS_REVISION_MESSAGE, *results_revision_code())
        if not _has_location(script):
            # A jobs table made before the directory and object stores.
            location_revision = _generate(script, LOCATION_MESSAGE, *location_revision_code())
    column_revisions = tuple(
        (revision.what, _generate(script, revision.message, *columns_revision_code(revision)))
        for revision in COLUMN_REVISIONS
        if not revision_written and not _has_columns(script, revision)
    )
    if not revision_written and not _has_owner_indexes(script):
        # A jobs table made before the owner limits: the revision of their indexes, after
        # the columns' revisions.
        owner_revision = _generate(script, OWNER_MESSAGE, *owner_revision_code())

    config_written = force or not config_path.exists()
    if config_written:
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(config_snippet(), encoding="utf-8")
    return InitResult(
        migrations_created,
        revision,
        revision_written,
        config_path,
        config_written,
        hot_revision,
        results_revision,
        location_revision,
        column_revisions,
        owner_revision,
    )


def _generate(script: ScriptDirectory, message: str, upgrades: str, downgrades: str) -> Path:
    """Write a revision after the current head; its path.

    :raises AsyncRequestError: the history has several heads.
    """
    _single_head(script)
    written = script.generate_revision(
        uuid.uuid4().hex[:12],
        message,
        head="head",
        upgrades=upgrades,
        downgrades=downgrades,
        # The results table's LONGBLOB, for MariaDB and MySQL.
        imports="from sqlalchemy.dialects import mysql",
    )
    assert written is not None and written.path is not None
    return Path(written.path)
