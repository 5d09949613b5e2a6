"""Retry, cancel or delete a selection of jobs: what the command line and the dashboard share.

A selection is a :class:`~.reading.JobFilter` (status, worker, owner, age) and a
limit, or a list of ids. Each job goes through the same function as a job acted
on alone (``retry_job``, ``cancel_job``, the purge's delete), so a job ended by
a bulk cancel triggers what any cancelled job does. A job the action does not
apply to (a retry of a job that did not fail, a cancel of a finished one) is
skipped with the reason, never an error of the whole.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import sqlalchemy as sa

from .exceptions import EnqueueError, JobFinished, JobNotFailed, JobNotFound
from .maintenance import retry_job
from .models import Job, JobStatus
from .reading import JobFilter, job_ids
from .retention import delete_matching
from .state import get_state
from .web import cancel_job

#: The most jobs one bulk action takes, by default.
DEFAULT_LIMIT = 1000
#: Jobs deleted by one statement.
DELETE_BATCH = 500
#: The statuses each action selects when the filter names none.
ACTION_STATUSES = {
    "retry": (JobStatus.FAILED,),
    "cancel": (JobStatus.WAITING, JobStatus.PROCESSING),
    "delete": (JobStatus.PROCESSED, JobStatus.FAILED, JobStatus.CANCELLED),
}


@dataclasses.dataclass
class BulkResult:
    """What a bulk action did."""

    action: str
    #: The ids of the jobs it acted on.
    done: list[int] = dataclasses.field(default_factory=list)
    #: The ids of the jobs it left alone, with why.
    skipped: dict[int, str] = dataclasses.field(default_factory=dict)
    #: Jobs retried whose message the broker refused: the sweeper sends them later.
    unsent: list[int] = dataclasses.field(default_factory=list)

    def as_json(self) -> dict[str, object]:
        """The result as ``--json`` prints it."""
        return {
            "action": self.action,
            "done": self.done,
            "skipped": [{"id": job_id, "reason": why} for job_id, why in self.skipped.items()],
            "unsent": self.unsent,
        }


def selection(action: str, filters: JobFilter) -> JobFilter:
    """``filters`` for ``action``: the statuses it applies to when none is named.

    :raises ValueError: ``filters`` selects every job (a bulk action needs a
        filter), or names a status the action does not apply to.
    """
    allowed = ACTION_STATUSES[action]
    if filters.empty:
        raise ValueError(
            f"A bulk {action} needs a selection: give job ids, or filter by status, worker,"
            " owner or age."
        )
    wrong = [status.value for status in filters.statuses if status not in allowed]
    if wrong:
        raise ValueError(
            f"Only {' or '.join(s.value for s in allowed)} jobs can be {_past(action)};"
            f" the selection asks for {', '.join(wrong)} ones."
        )
    if not filters.statuses:
        filters = dataclasses.replace(filters, statuses=allowed)
    return filters


def _past(action: str) -> str:
    return {"retry": "retried", "cancel": "cancelled", "delete": "deleted"}[action]


def selected(action: str, filters: JobFilter, limit: int = DEFAULT_LIMIT) -> list[int]:
    """The ids a bulk ``action`` on ``filters`` would take, newest first.

    :raises ValueError: see :func:`selection`.
    """
    return job_ids(selection(action, filters), limit)


def retry(ids: Iterable[int]) -> BulkResult:
    """Run each failed job of ``ids`` again."""
    result = BulkResult("retry")
    for job_id in ids:
        try:
            retry_job(job_id)
        except (JobNotFound, JobNotFailed) as e:
            result.skipped[job_id] = str(e)
            continue
        except EnqueueError:
            result.unsent.append(job_id)
        result.done.append(job_id)
    return result


def cancel(ids: Iterable[int]) -> BulkResult:
    """Cancel each waiting or running job of ``ids``."""
    result = BulkResult("cancel")
    for job_id in ids:
        try:
            cancel_job(job_id)
        except JobNotFound as e:
            result.skipped[job_id] = str(e)
            continue
        except JobFinished as e:
            result.skipped[job_id] = f"{e} It cannot be cancelled."
            continue
        result.done.append(job_id)
    return result


def delete(ids: Iterable[int]) -> BulkResult:
    """Delete each finished job of ``ids``, with its stored result; a pending job is kept."""
    result = BulkResult("delete")
    wanted = list(ids)
    store = get_state().store()
    read = sa.select(Job.id, Job.status).where(Job.id.in_(wanted))
    present = {int(row[0]): JobStatus(row[1]) for row in store.all(read, {})} if wanted else {}
    finished = [job_id for job_id, status in present.items() if status.finished]
    if finished:
        # The status again in the DELETE: a job retried meanwhile is kept.
        condition = Job.id.in_(finished) & Job.status.in_(ACTION_STATUSES["delete"])
        delete_matching(store, condition, batch_size=DELETE_BATCH)
    kept = {int(row[0]) for row in store.all(sa.select(Job.id).where(Job.id.in_(wanted)), {})}
    for job_id in wanted:
        if job_id not in present:
            result.skipped[job_id] = str(JobNotFound(job_id))
        elif job_id not in kept:
            result.done.append(job_id)
        else:
            status = present[job_id].value
            result.skipped[job_id] = f"Job {job_id} is {status}; only finished jobs can be deleted."
    return result
