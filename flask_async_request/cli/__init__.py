"""``flask async-request ...``: thin click wrappers over the plain functions of the library.

The commands that read jobs are in :mod:`.jobs`, those that act on jobs named
by id or selected in :mod:`.selection`, those that operate the library in
:mod:`.operations`; what they share (parameter types, ``--json``, tables, errors
as messages) in :mod:`.options`.
"""

from __future__ import annotations

from flask.cli import AppGroup

from .jobs import list_command, redeliver_command, show_command, stats_command
from .operations import (
    beat_command,
    init_command,
    purge_command,
    sweep_command,
    worker_command,
)
from .selection import cancel_command, retry_command

cli = AppGroup("async-request", help="Manage flask-async-request jobs, workers and migrations.")

for _command in (
    init_command,
    purge_command,
    sweep_command,
    list_command,
    show_command,
    retry_command,
    cancel_command,
    redeliver_command,
    stats_command,
    worker_command,
    beat_command,
):
    cli.add_command(_command)

__all__ = ["cli"]
