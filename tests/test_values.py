"""The values a job's row holds: times in UTC, uids, finite floats, text every database stores."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flask_async_request.values import (
    as_utc,
    finite,
    format_size,
    iso_utc,
    lone_surrogate,
    new_uid,
    short_repr,
    unstorable,
    utcnow,
)

# Times ----------------------------------------------------------------------------------------


def test_utcnow_is_aware_and_in_utc() -> None:
    """The current time carries UTC as its zone."""
    before = datetime.now(timezone.utc)
    now = utcnow()
    assert now.utcoffset() == timedelta(0)
    assert before <= now <= datetime.now(timezone.utc)


def test_as_utc_takes_a_naive_time_as_utc() -> None:
    """A naive time (as SQLite hands back) keeps its wall time and gains UTC."""
    assert as_utc(datetime(2024, 5, 1, 12)) == datetime(2024, 5, 1, 12, tzinfo=timezone.utc)


def test_as_utc_converts_an_aware_time() -> None:
    """An aware time in another zone is the same instant, in UTC."""
    paris = datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2)))
    converted = as_utc(paris)
    assert converted == paris
    assert converted.tzinfo == timezone.utc
    assert converted.hour == 12


@given(st.datetimes(timezones=st.timezones()))
def test_as_utc_keeps_the_instant_of_any_aware_time(value: datetime) -> None:
    """Whatever its zone, an aware time stays the same instant, with an offset of zero."""
    converted = as_utc(value)
    # Compared by timestamp: a time in a zone's DST gap never compares equal across zones.
    assert converted.timestamp() == value.timestamp()
    assert converted.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (None, None),
        (datetime(2024, 5, 1, 12), "2024-05-01T12:00:00+00:00"),
        (
            datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2))),
            "2024-05-01T12:00:00+00:00",
        ),
    ],
)
def test_iso_utc_writes_iso_8601_in_utc(value: datetime | None, text: str | None) -> None:
    """A time is written in ISO 8601 with a +00:00 offset; None stays None."""
    assert iso_utc(value) == text


# Floats and text ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (None, None),
        (0.5, 0.5),
        (0.0, 0.0),
        (-3.0, -3.0),
        (float("nan"), None),
        (float("inf"), None),
    ],
)
def test_finite_drops_what_json_has_no_value_for(value: float | None, kept: float | None) -> None:
    """NaN and infinities become None; finite floats and None are kept."""
    assert finite(value) == kept


def test_finite_drops_negative_infinity() -> None:
    """-inf is no more JSON than inf."""
    assert finite(float("-inf")) is None


def test_short_repr_keeps_a_short_value_whole() -> None:
    """A repr of at most ``limit`` characters is the repr."""
    assert short_repr("abc") == "'abc'"
    assert short_repr("x" * 58) == repr("x" * 58)


def test_short_repr_cuts_a_long_value_and_shows_where_it_ends() -> None:
    """A longer repr is cut to ``limit`` characters, ending with ... and its last two."""
    text = short_repr("x" * 1000 + "yz")
    assert len(text) == 60
    assert text == "'" + "x" * 54 + "...z'"


@given(st.text(), st.integers(min_value=10, max_value=200))
def test_short_repr_is_never_longer_than_its_limit(value: str, limit: int) -> None:
    """Any value's short repr is its repr, or a repr cut to exactly ``limit`` characters."""
    text = short_repr(value, limit)
    full = repr(value)
    if len(full) <= limit:
        assert text == full
    else:
        assert len(text) == limit
        assert text.startswith(full[: limit - 5])
        assert text.endswith("..." + full[-2:])


@pytest.mark.parametrize(
    ("text", "lone"),
    [
        ("", False),
        ("plain", False),
        ("é and 😀", False),
        ("\ud800", True),
        ("a\udfffb", True),
        ("\ud83d", True),
        ("\ud83d\ude00", True),  # a pair as two str code points: still not encodable as UTF-8
    ],
)
def test_lone_surrogate(text: str, lone: bool) -> None:
    """A str holding any surrogate code point cannot be encoded; other non-ASCII text can."""
    assert lone_surrogate(text) is lone


@given(st.text())
def test_lone_surrogate_says_whether_utf_8_can_encode_the_text(text: str) -> None:
    """lone_surrogate is true exactly where encoding to UTF-8 fails."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        assert lone_surrogate(text)
    else:
        assert not lone_surrogate(text)


@pytest.mark.parametrize(
    ("text", "limit", "reason"),
    [
        ("fine", None, None),
        ("fine", 4, None),
        ("a\x00b", None, "it contains a NUL character"),
        ("x" * 1001, 1000, "it is 1,001 characters long, and its column holds 1,000"),
        ("x\ud800", None, "it contains a lone surrogate, which is not valid Unicode text"),
        ("x" * 10_000, None, None),
        ("\x00" * 10 + "\ud800", 5, "it contains a NUL character"),
        ("x" * 10 + "\ud800", 5, "it is 11 characters long, and its column holds 5"),
    ],
)
def test_unstorable_says_why_no_database_takes_the_text(
    text: str, limit: int | None, reason: str | None
) -> None:
    """A NUL, then a length past the column's, then a lone surrogate; None for storable text."""
    assert unstorable(text, limit) == reason


def test_new_uids_are_32_hex_digits_and_differ() -> None:
    """A uid is 32 lowercase hex digits; two are never the same."""
    uids = {new_uid() for _ in range(100)}
    assert len(uids) == 100
    assert all(re.fullmatch("[0-9a-f]{32}", uid) for uid in uids)


@pytest.mark.parametrize(
    ("size", "shown"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1_843_211, "1.8 MiB"),
        (3 * 2**30, "3.0 GiB"),
    ],
)
def test_format_size(size: int, shown: str) -> None:
    """Sizes read in bytes, then binary units with one decimal."""
    assert format_size(size) == shown
