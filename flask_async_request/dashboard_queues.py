"""The dashboard's queue view: what waits on each queue, and the worker processes seen.

The depth of each queue and how long its first due job has waited come from the
jobs table (one query on the index of unfinished jobs); which worker processes
consume which queue, from Celery's inspect (their answers within a second).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, render_template

from .exceptions import BrokerUnavailable
from .maintenance import consumers
from .reading import queue_depths
from .state import get_state

#: Seconds the worker processes have to answer the inspect.
INSPECT_TIMEOUT = 1.0


def queues_view() -> Any:
    """Each queue's waiting jobs, the oldest's wait, and whether any worker consumes it."""
    default = get_state().celery.conf.task_default_queue
    unreachable = None
    try:
        workers = consumers(INSPECT_TIMEOUT)
    except BrokerUnavailable as e:
        # The queues' depths are the database's: still shown, the workers unknown.
        unreachable = str(e)
        workers = {}
    consumed_by: dict[str, list[str]] = {}
    for name, names in (workers or {}).items():
        for queue in names:
            consumed_by.setdefault(queue, []).append(name)
    depths = [(depth, depth.queue or default) for depth in queue_depths()]
    return render_template(
        "async_request_dashboard/queues.html",
        depths=depths,
        workers=workers,
        consumed_by=consumed_by,
        unreachable=unreachable,
    )


def add_views(blueprint: Blueprint) -> None:
    """Register the queue view on the dashboard's ``blueprint``."""
    blueprint.add_url_rule("/queues", "queues", queues_view, methods=["GET"])
