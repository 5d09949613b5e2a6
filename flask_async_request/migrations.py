"""Scaffolding for an app: the Alembic revisions of the library's tables and a config snippet."""

from __future__ import annotations

import dataclasses
import textwrap
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from alembic.script import ScriptDirectory

from .config import SETTINGS, default_source
from .exceptions import AsyncRequestError
from .revisions import REVISION_MESSAGE, STEPS, Step, creates_jobs_table, creation_code

if TYPE_CHECKING:
    from flask import Flask


@dataclasses.dataclass(frozen=True)
class InitResult:
    """What :func:`init_app_files` did."""

    migrations_created: bool
    revision: Path
    revision_written: bool
    config: Path
    config_written: bool
    #: The steps written for a jobs table made by an earlier release, each with its
    #: revision, in their order (see :data:`~flask_async_request.revisions.STEPS`).
    steps: tuple[tuple[Step, Path], ...] = ()


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


def _single_head(script: ScriptDirectory) -> None:
    heads = script.get_heads()
    if len(heads) > 1:
        raise AsyncRequestError(
            f"The migration history has several heads ({', '.join(heads)}); merge them with"
            " `flask db merge heads`, then run this command again."
        )


def init_app_files(app: Flask, config_path: Path, *, force: bool = False) -> InitResult:
    """Write the tables' revision, or the steps an earlier one lacks, and the config snippet.

    Runs inside an app context. The revision goes into the app's Flask-Migrate
    ``versions`` folder (made with ``flask db init`` when missing), after the
    current head. A revision that already creates the jobs table is left alone,
    and each step of :data:`~flask_async_request.revisions.STEPS` that no revision
    of the history makes is written after it, in their order; so it is safe to
    run again. The config snippet is written unless it exists, or always with
    ``force``.

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

    history = [
        (Path(revision.path), Path(revision.path).read_text(encoding="utf-8"))
        for revision in script.walk_revisions()
        if revision.path is not None
    ]
    revision = next((path for path, text in history if creates_jobs_table(text)), None)
    revision_written = False
    steps: tuple[tuple[Step, Path], ...] = ()
    if revision is None:
        revision = _generate(script, REVISION_MESSAGE, *creation_code())
        revision_written = True
    else:
        # A table made by an earlier release: its revisions are the app's own history,
        # so each change it lacks comes as a revision after them, in their order.
        steps = tuple(
            (step, _generate(script, step.message, *step.code()))
            for step in STEPS
            if not any(step.made_in(text) for _, text in history)
        )

    config_written = force or not config_path.exists()
    if config_written:
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(config_snippet(), encoding="utf-8")
    return InitResult(
        migrations_created, revision, revision_written, config_path, config_written, steps
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
