"""dashboard_format: times, durations and long text as the dashboard writes them."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from flask_async_request.dashboard_format import (
    SHOWN_CHARS,
    format_elapsed,
    format_iso,
    format_moment,
    format_percent,
    shown,
)


def test_times_read_in_utc_or_as_a_dash() -> None:
    """A moment reads in UTC, ISO 8601 for machines; none is a dash or empty."""
    moment = datetime(2026, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert format_moment(moment) == "2026-05-01 12:00:00 UTC"
    assert format_moment(None) == "-" and format_iso(None) == ""


def test_durations_and_progress_read_for_a_person() -> None:
    """Milliseconds, tenths of a second, then the duration format; progress in percent."""
    assert format_elapsed(timedelta(milliseconds=350)) == "350 ms"
    assert format_elapsed(timedelta(seconds=12.34)) == "12.3 s"
    assert format_elapsed(None) == "-"
    assert format_percent(0.421) == "42%" and format_percent(float("nan")) == "-"


def test_long_text_is_cut_and_the_rest_counted() -> None:
    """Past SHOWN_CHARS the text is cut and the characters left out are counted."""
    assert shown("abc") == ("abc", 0)
    assert shown("x" * (SHOWN_CHARS + 5)) == ("x" * SHOWN_CHARS, 5)
