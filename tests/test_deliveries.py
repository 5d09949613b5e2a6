"""deliveries: the entries of a callback's delivery log, kept bounded and read back leniently."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from flask_async_request.deliveries import (
    DELIVERED,
    FAILED,
    MAX_DELIVERIES,
    Delivery,
    appended,
    decode,
    host_of,
)

AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_an_entry_round_trips_through_its_json() -> None:
    """as_json and from_json give back the same entry."""
    entry = Delivery(AT, FAILED, "hooks.example", 0.25, error="TimeoutError", delivery=3)
    assert Delivery.from_json(json.loads(json.dumps(entry.as_json()))) == entry
    assert entry.as_json()["at"] == "2026-01-02T03:04:05+00:00"


def test_the_log_keeps_the_newest_entries_only() -> None:
    """Past MAX_DELIVERIES entries, the oldest go first."""
    stored = None
    for number in range(1, MAX_DELIVERIES + 6):
        stored = appended(stored, Delivery(AT, DELIVERED, "h", 0.1, 200, delivery=number))
    log = decode(stored)
    assert len(log) == MAX_DELIVERIES
    assert [entry.delivery for entry in log] == list(range(6, MAX_DELIVERIES + 6))


def test_an_unreadable_log_or_entry_is_left_out() -> None:
    """A log edited by hand into nonsense reads as what can still be read."""
    good = Delivery(AT, DELIVERED, "h", 0.1, 204).as_json()
    assert decode(None) == decode("") == decode("not json") == decode('{"a": 1}') == []
    assert decode(json.dumps([good, {"at": "never"}, 7, {"outcome": "x"}])) == [
        Delivery.from_json(good)
    ]


def test_only_the_host_of_the_url_is_kept() -> None:
    """Path, query, port and credentials stay out of the log."""
    assert host_of("https://user:secret@hooks.example:8443/p?token=abc") == "hooks.example"
    assert host_of(None) == host_of("not a url") == "?"
    assert len(host_of("http://" + "a" * 300 + ".example/")) == 255
