"""A job's callback delivery log: each attempt to POST its end, the last few kept.

Every delivery, whether the worker's task made it, a retry of it, or an
operator's redelivery (``flask async-request redeliver``, the dashboard), adds
an entry to the job's ``callback_deliveries`` column: when it was made, the
host only of the url (never its path or query, which may hold a secret), the
receiver's status code or the class of the error that kept it from answering,
and how long it took. The column holds the newest :data:`MAX_DELIVERIES`, as
JSON text (text, so that every driver hands it back alike).
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from datetime import datetime
from typing import Any

from .values import as_utc

#: Entries kept per job: the newest ones.
MAX_DELIVERIES = 20
#: Longest host kept in an entry.
MAX_HOST_LENGTH = 255

#: The outcomes of a delivery.
DELIVERED, FAILED, REFUSED = "delivered", "failed", "refused"


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One attempt to deliver a job's callback."""

    #: When the delivery started.
    at: datetime
    #: ``delivered`` (a 2xx), ``failed`` (another status, or no answer: tried
    #: again), ``refused`` (the url may not be called: never tried again).
    outcome: str
    #: The callback url's host.
    host: str
    #: Seconds the delivery took.
    duration: float
    #: The receiver's status code, if it answered.
    status_code: int | None = None
    #: The class of the error that kept it from answering (``TimeoutError``,
    #: ``ConnectionRefusedError``, ``CallbackRefused``...).
    error: str | None = None
    #: Which delivery of the job's end this was, for the task that made it.
    delivery: int = 1
    #: Made by an operator's redelivery, not by the worker's task.
    redelivery: bool = False
    #: The ``webhook-id`` it was signed with: the same for every delivery of one end.
    message_id: str | None = None

    def as_json(self) -> dict[str, Any]:
        """The entry as stored (and as ``show --json`` prints it)."""
        data = dataclasses.asdict(self)
        data["at"] = as_utc(self.at).isoformat()
        data["duration"] = round(self.duration, 4)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Delivery:
        """An entry as stored.

        :raises ValueError: the entry is not one.
        :raises TypeError: the entry is not one.
        :raises KeyError: the entry is not one.
        """
        names = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in names}
        values["at"] = as_utc(datetime.fromisoformat(str(values["at"])))
        values["duration"] = float(values["duration"])
        return cls(**values)


def host_of(url: str | None) -> str:
    """The host of ``url`` (``"?"`` when it has none), cut to :data:`MAX_HOST_LENGTH`."""
    try:
        host = urllib.parse.urlsplit(url or "").hostname or "?"
    except ValueError:
        host = "?"
    return host[:MAX_HOST_LENGTH]


def decode(stored: str | None) -> list[Delivery]:
    """The entries of a stored log, oldest first; an unreadable log or entry is left out."""
    if not stored:
        return []
    try:
        entries = json.loads(stored)
    except ValueError:
        return []
    if not isinstance(entries, list):
        return []
    log = []
    for entry in entries:
        try:
            log.append(Delivery.from_json(entry))
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return log


def appended(stored: str | None, delivery: Delivery) -> str:
    """The stored log with ``delivery`` added, the oldest entries dropped past the bound."""
    log = [entry.as_json() for entry in decode(stored)]
    log.append(delivery.as_json())
    return json.dumps(log[-MAX_DELIVERIES:], separators=(",", ":"))
