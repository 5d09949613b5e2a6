"""Scaffolding for an app: the Alembic revision of the jobs table and a config snippet."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

import sqlalchemy as sa
from alembic.autogenerate import render_python_code
from alembic.operations import ops
from alembic.script import ScriptDirectory

from .config import DEFAULTS
from .exceptions import AsyncRequestError
from .models import TABLE_NAME, Job

if TYPE_CHECKING:
    from flask import Flask

#: Written into the revision, so a second ``init`` finds it.
MARKER = f"flask-async-request: create {TABLE_NAME}"
REVISION_MESSAGE = f"create {TABLE_NAME}"

_DESCRIPTIONS = {
    "ASYNC_REQUEST_SIGN_ALGORITHM": "JWT algorithm: HS256/384/512, RS/PS/ES256/384/512.",
    "ASYNC_REQUEST_ENCODE_KEY": "Signing key; None: SECRET_KEY (a PEM private key for RS/PS/ES).",
    "ASYNC_REQUEST_DECODE_KEY": "Verifying key; None: SECRET_KEY (for RS/PS/ES: the public half).",
    "ASYNC_REQUEST_TOKEN_EXPIRATION": "How long a job token is valid: int seconds or timedelta.",
    "ASYNC_REQUEST_HEADER_KEY": "Request header that carries the token.",
    "ASYNC_REQUEST_URL_PREFIX": "Where the status endpoint is mounted.",
    "ASYNC_REQUEST_QUEUE": "Celery queue the jobs are sent to; None means Celery's default.",
    "ASYNC_REQUEST_RETRY": "False, or how many times a raising job is retried (with backoff).",
    "ASYNC_REQUEST_CLEAN_JOBS": "Purge old finished jobs periodically (needs `celery beat`).",
    "ASYNC_REQUEST_CLEAN_JOBS_CRON": "When the purge runs: crontab string, or seconds between runs",
    "ASYNC_REQUEST_JOBS_EXPIRATION": "Age at which finished jobs are purged (seconds, timedelta).",
    "ASYNC_REQUEST_LEASE": "A running job's lease; a worker silent this long is presumed lost.",
    "ASYNC_REQUEST_WAITING_TIMEOUT": "A waiting job not claimed this long after due is sent again.",
    "ASYNC_REQUEST_SWEEP_INTERVAL": "How often beat sweeps lost and stuck jobs; None turns it off.",
    "ASYNC_REQUEST_RETRY_AFTER": "Seconds a 202 asks the client to wait before polling again.",
    "ASYNC_REQUEST_MAX_WAIT": "Longest wait a poll may ask for with `Prefer: wait=N`; 0: none.",
    "ASYNC_REQUEST_CALLBACK_KEY": "Key that signs completion callbacks; None means SECRET_KEY.",
    "ASYNC_REQUEST_CALLBACK_ALLOW_PRIVATE": "Deliver callbacks to loopback and private addresses.",
}


@dataclasses.dataclass(frozen=True)
class InitResult:
    """What :func:`init_app_files` did."""

    migrations_created: bool
    revision: Path
    revision_written: bool
    config: Path
    config_written: bool


def _render(value: object) -> str:
    if isinstance(value, timedelta):
        return f"timedelta(seconds={int(value.total_seconds())})"
    return repr(value)


def config_snippet() -> str:
    """A Python config file listing every ``ASYNC_REQUEST_*`` key and its default, commented."""
    lines = [
        "# flask-async-request settings. Uncomment and change what you need, then load this",
        '# file with app.config.from_pyfile(...). Celery settings go in app.config["CELERY"],',
        '# for example CELERY = {"broker_url": "redis://127.0.0.1:6379/0"}; without a broker',
        "# jobs run in a worker thread of the web process (for development only).",
        "",
        "from datetime import timedelta  # noqa: F401",
        "",
    ]
    for key, value in DEFAULTS.items():
        lines += [f"# {_DESCRIPTIONS[key]}", f"# {key} = {_render(value)}", ""]
    return "\n".join(lines)


def _revision_code() -> tuple[str, str]:
    table = cast(sa.Table, Job.__table__)
    indexes = sorted(table.indexes, key=lambda index: str(index.name))
    upgrade = render_python_code(
        ops.UpgradeOps(
            ops=[
                ops.CreateTableOp.from_table(table),
                *(ops.CreateIndexOp.from_index(index) for index in indexes),
            ]
        )
    )
    downgrade = render_python_code(
        ops.DowngradeOps(
            ops=[
                *(ops.DropIndexOp.from_index(index) for index in indexes),
                ops.DropTableOp.from_table(table),
            ]
        )
    )

    def mark(code: str) -> str:
        first, _, rest = code.partition("\n")
        return f"# {MARKER}\n{rest}" if first.startswith("# ###") else f"# {MARKER}\n    {code}"

    return mark(upgrade), mark(downgrade)


def _existing_revision(script: ScriptDirectory) -> Path | None:
    """The revision that already creates the jobs table, written by ``init`` or autogenerate."""
    creates = (f"create_table('{TABLE_NAME}'", f'create_table("{TABLE_NAME}"')
    for revision in script.walk_revisions():
        if revision.path is None:
            continue
        text = Path(revision.path).read_text(encoding="utf-8")
        if MARKER in text or any(c in text for c in creates):
            return Path(revision.path)
    return None


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
    if revision is None:
        heads = script.get_heads()
        if len(heads) > 1:
            raise AsyncRequestError(
                f"The migration history has several heads ({', '.join(heads)}); merge them with"
                " `flask db merge heads`, then run this command again."
            )
        upgrades, downgrades = _revision_code()
        written = script.generate_revision(
            uuid.uuid4().hex[:12],
            REVISION_MESSAGE,
            head="head",
            upgrades=upgrades,
            downgrades=downgrades,
        )
        assert written is not None and written.path is not None
        revision, revision_written = Path(written.path), True

    config_written = force or not config_path.exists()
    if config_written:
        config_path.parent.mkdir(parents=True, exist_ok=True)
        config_path.write_text(config_snippet(), encoding="utf-8")
    return InitResult(migrations_created, revision, revision_written, config_path, config_written)
