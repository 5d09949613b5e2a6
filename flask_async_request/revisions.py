"""The code of the revisions ``init`` writes: the tables' creation, then each later change."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, cast

import sqlalchemy as sa
from alembic.autogenerate import render_python_code
from alembic.operations import ops

from .models import FILLFACTOR, RESULTS_TABLE_NAME, TABLE_NAME, Job, ResultChunk

#: Written into the revision that creates the tables, so a second ``init`` finds it.
MARKER = f"flask-async-request: create {TABLE_NAME}"
REVISION_MESSAGE = f"create {TABLE_NAME}"
#: The jobs table's columns that came with the result store.
RESULT_COLUMNS = ("headers", "result_size", "result_sha256")
#: The jobs table's column that came with the directory and object stores.
LOCATION_COLUMN = "result_location"
#: The index that only a table with the indexes of HOT updates has.
_HOT_INDEX = f"ix_{TABLE_NAME}_unfinished_id"
#: The indexes of a table created before, in place of those the model has by their names.
_INDEXES_BEFORE = (
    ops.CreateIndexOp(f"ix_{TABLE_NAME}_finished_at", TABLE_NAME, ["finished_at"]),
    ops.CreateIndexOp(f"ix_{TABLE_NAME}_status_id", TABLE_NAME, ["status", "id"]),
)
#: The indexes the per-owner limits read, by name.
OWNER_INDEXES = (f"ix_{TABLE_NAME}_owner_created_at", f"ix_{TABLE_NAME}_owner_unfinished")
_END = "    # ### end Alembic commands ###"
_SET_FILLFACTOR = f"ALTER TABLE {TABLE_NAME} SET (fillfactor = {FILLFACTOR})"


@dataclasses.dataclass(frozen=True)
class Step:
    """A change to the jobs table after a release made it, written as a revision of its own."""

    #: Written into the revision, so a second ``init`` finds it.
    marker: str
    #: The revision's message.
    message: str
    #: What ``init`` says it wrote: "Wrote <wrote>: <path>".
    wrote: str
    #: What the upgrade does: "Next: run `flask db upgrade` to <upgrade>."
    upgrade: str
    #: The upgrade and downgrade, as Alembic renders them (:meth:`code` marks them).
    write: Callable[[], tuple[str, str]]
    #: Text of which any in a revision shows the change made, by it or by the creation.
    signs: tuple[str, ...]
    #: The columns it adds to the jobs table, in their order.
    columns: tuple[str, ...] = ()

    def code(self) -> tuple[str, str]:
        """The upgrade and downgrade, each with the :attr:`marker` as its first line."""
        upgrade, downgrade = self.write()
        return _marked(upgrade, self.marker), _marked(downgrade, self.marker)

    def made_in(self, text: str) -> bool:
        """Whether the revision whose text is ``text`` makes this change."""
        return self.marker in text or any(sign in text for sign in self.signs)


def _marked(code: str, marker: str) -> str:
    """Alembic's rendered ``code``, its first line the ``marker`` a second ``init`` looks for."""
    first, _, rest = code.partition("\n")
    return f"# {marker}\n{rest}" if first.startswith("# ###") else f"# {marker}\n    {code}"


def _on_postgresql(code: str, statement: str) -> str:
    """``code`` with ``statement`` run on PostgreSQL at its end: no Alembic operation says it."""
    run = (
        '    if op.get_context().dialect.name == "postgresql":\n'
        f'        op.execute("{statement}")\n'
    )
    return code.replace(_END, run + _END)


def _indexes(table: sa.Table) -> list[sa.Index]:
    return sorted(table.indexes, key=lambda index: str(index.name))


def _detached(table: sa.Table, name: str) -> sa.Column[Any]:
    """Column ``name`` of ``table`` as a new column, in no table yet (nullable, no default)."""
    column = table.c[name]
    return sa.Column(name, column.type, nullable=column.nullable)


def _named_column(name: str) -> tuple[str, ...]:
    """How a revision names column ``name``, in Alembic's quotes or another's."""
    return (f"sa.Column('{name}'", f'sa.Column("{name}"')


def _created_table(name: str) -> tuple[str, ...]:
    """How a revision creates table ``name``, in Alembic's quotes or another's."""
    return (f"create_table('{name}'", f'create_table("{name}"')


def creates_jobs_table(text: str) -> bool:
    """Whether the revision whose text is ``text`` creates the jobs table (``init``'s or not)."""
    return MARKER in text or any(created in text for created in _created_table(TABLE_NAME))


def creation_code() -> tuple[str, str]:
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
    return _on_postgresql(_marked(upgrade, MARKER), _SET_FILLFACTOR), _marked(downgrade, MARKER)


def _hot_indexes() -> tuple[str, str]:
    """The indexes of HOT updates in place of those of a table created with an index on status.

    The index on ``(status, id)`` made every change of status, a claim's too,
    write a new entry into every index; ``finished_at``'s now leaves out the jobs
    not finished, and a new one holds those by id. The fillfactor applies to
    pages written from then on.
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
    return (
        _on_postgresql(upgrade, _SET_FILLFACTOR),
        _on_postgresql(downgrade, f"ALTER TABLE {TABLE_NAME} RESET (fillfactor)"),
    )


def _result_store() -> tuple[str, str]:
    """The result store added to a jobs table made before it.

    The jobs table gains the reply's kept headers and a stored result's size and
    checksum; the results table is created.
    """
    jobs = cast(sa.Table, Job.__table__)
    results = cast(sa.Table, ResultChunk.__table__)
    added = [
        ops.AddColumnOp.from_column_and_tablename(None, TABLE_NAME, _detached(jobs, name))
        for name in RESULT_COLUMNS
    ]
    upgrade = render_python_code(
        ops.UpgradeOps(ops=[*added, ops.CreateTableOp.from_table(results)])
    )
    downgrade = render_python_code(
        ops.DowngradeOps(
            ops=[ops.DropTableOp.from_table(results), *(op.reverse() for op in reversed(added))]
        )
    )
    return upgrade, downgrade


def _columns(columns: tuple[str, ...]) -> tuple[str, str]:
    """``columns`` added to a jobs table made before them, in their order (nullable, no default)."""
    jobs = cast(sa.Table, Job.__table__)
    added = [
        ops.AddColumnOp.from_column_and_tablename(None, TABLE_NAME, _detached(jobs, name))
        for name in columns
    ]
    upgrade = render_python_code(ops.UpgradeOps(ops=list(added)))
    downgrade = render_python_code(ops.DowngradeOps(ops=[op.reverse() for op in reversed(added)]))
    return upgrade, downgrade


def _owner_indexes() -> tuple[str, str]:
    """The indexes the per-owner limits read, added to a table made before them."""
    table = cast(sa.Table, Job.__table__)
    added = [index for index in _indexes(table) if index.name in OWNER_INDEXES]
    upgrade = render_python_code(
        ops.UpgradeOps(ops=[ops.CreateIndexOp.from_index(index) for index in added])
    )
    downgrade = render_python_code(
        ops.DowngradeOps(ops=[ops.DropIndexOp.from_index(index) for index in reversed(added)])
    )
    return upgrade, downgrade


def _adds_columns(name: str, columns: tuple[str, ...], what: str) -> Step:
    """The step that adds ``columns``, the revision of ``what``; a column's name shows it made."""
    return Step(
        f"flask-async-request: {TABLE_NAME} {name}",
        f"{TABLE_NAME} {name}",
        f"the revision of {what}",
        "add its columns",
        functools.partial(_columns, columns),
        _named_column(columns[0]),
        columns,
    )


HOT_INDEXES = Step(
    f"flask-async-request: {TABLE_NAME} indexes for HOT updates",
    f"{TABLE_NAME} indexes for HOT updates",
    "the revision of the jobs table's new indexes",
    "change them",
    _hot_indexes,
    (_HOT_INDEX,),
)
RESULT_STORE = Step(
    f"flask-async-request: create {RESULTS_TABLE_NAME}",
    f"create {RESULTS_TABLE_NAME}",
    "the result store revision",
    "add the result store",
    _result_store,
    _created_table(RESULTS_TABLE_NAME),
    RESULT_COLUMNS,
)
RESULT_LOCATION = Step(
    f"flask-async-request: {TABLE_NAME} {LOCATION_COLUMN}",
    f"{TABLE_NAME} {LOCATION_COLUMN}",
    "the result location revision",
    f"add the jobs table's {LOCATION_COLUMN}",
    functools.partial(_columns, (LOCATION_COLUMN,)),
    # Any mention: the creation names it in its columns, the step in its own.
    (LOCATION_COLUMN,),
    (LOCATION_COLUMN,),
)
#: The steps that only add columns to the jobs table, oldest first.
COLUMN_STEPS = (
    _adds_columns("trace context", ("trace_context",), "the jobs' trace context"),
    _adds_columns("callback delivery log", ("callback_deliveries",), "the callbacks' delivery log"),
    _adds_columns("traceback", ("traceback",), "the failed jobs' tracebacks"),
)
OWNER_LIMITS = Step(
    f"flask-async-request: {TABLE_NAME} indexes of the owner limits",
    f"{TABLE_NAME} indexes of the owner limits",
    "the revision of the owner limits' indexes",
    "add them",
    _owner_indexes,
    (OWNER_INDEXES[0],),
)

#: The changes to a jobs table made by an earlier release, oldest first: ``init``
#: writes those that no revision of the app's history makes, in this order.
STEPS = (HOT_INDEXES, RESULT_STORE, RESULT_LOCATION, *COLUMN_STEPS, OWNER_LIMITS)
