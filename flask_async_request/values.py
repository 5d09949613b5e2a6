"""The values a job's row holds, and the checks on them: times in UTC, uids,
finite floats, and text every database can store."""

from __future__ import annotations

import math
import re
import uuid
from datetime import datetime, timezone


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(timezone.utc)


def new_uid() -> str:
    """A new job's uid: 32 random hex digits."""
    return uuid.uuid4().hex


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (SQLite hands back naive ones)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def iso_utc(value: datetime | None) -> str | None:
    """``value`` in ISO 8601, in UTC (``2024-05-01T12:00:00+00:00``); ``None`` for none."""
    return None if value is None else as_utc(value).isoformat()


def finite(value: float | None) -> float | None:
    """``value``, or ``None`` for none and for NaN or an infinity.

    JSON has no NaN or infinity, which a float column edited by hand may hold.
    """
    return value if value is None or math.isfinite(value) else None


def format_size(size: int) -> str:
    """A number of bytes for a reader: ``512 B``, ``1.5 KiB``, ``1.8 MiB``, ``2.0 GiB``."""
    if size < 1024:
        return f"{size} B"
    value = float(size)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 1024 or unit == "TiB":
            break
    return f"{value:.1f} {unit}"


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)``, cut to ``limit`` characters: an error message may echo any input."""
    text = repr(value)
    # The last characters kept show where the value ends (its closing quote).
    return text if len(text) <= limit else f"{text[: limit - 5]}...{text[-2:]}"


#: A code point that no driver can encode as UTF-8: half of a surrogate pair, alone.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate, which no database driver can encode."""
    return not text.isascii() and _LONE_SURROGATE.search(text) is not None


def unstorable(text: str, limit: int | None = None) -> str | None:
    """Why no database can store ``text`` in a column of ``limit`` characters; ``None`` if it can.

    PostgreSQL's text types refuse the NUL character, and a lone surrogate (a
    Python str that is not valid Unicode, such as ``"\\ud800"``) cannot be
    encoded by any driver; the same text is refused on every database, so what
    works on SQLite in development works on PostgreSQL in production. The reason
    reads after "cannot be stored: ".
    """
    if "\x00" in text:
        return "it contains a NUL character"
    if limit is not None and len(text) > limit:
        return f"it is {len(text):,} characters long, and its column holds {limit:,}"
    if lone_surrogate(text):
        return "it contains a lone surrogate, which is not valid Unicode text"
    return None
