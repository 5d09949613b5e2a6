"""The converters of the settings: each turns one config value into a typed one, or refuses it.

A converter takes the key and the value the app's config gives it, and returns
the value :class:`~flask_async_request.config.Settings` holds, or raises
:exc:`~flask_async_request.ConfigurationError` with a sentence that names the
key, what it got and what would be right.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Collection
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import jwt.algorithms
from celery.schedules import crontab

from .directory import DirectoryStore, path_of
from .exceptions import ConfigurationError
from .s3 import S3Store
from .storage import ResultStore

T = TypeVar("T")

#: Turns the value of a key into a setting's value.
Converter = Callable[[str, Any], T]

# Matched whole (fullmatch): "$" would let a line end through.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

#: The longest duration a setting takes: now plus or minus it stays a date (an
#: expiry, a retention's cutoff), which a timedelta's own maximum would not.
LONGEST_DURATION = timedelta(days=36_525)


def invalid(key: str, got: object, expected: str) -> ConfigurationError:
    """The error for ``key``: what it got, and what would be right."""
    return ConfigurationError(f"{key} is {got!r}; expected {expected}.")


def parse_duration(text: str) -> timedelta:
    """Parse ``"90"``, ``"30s"``, ``"15m"``, ``"2h"``, ``"7d"`` or ``"1w"`` into a timedelta.

    :raises ValueError: for anything else.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration; use a number with an optional unit s, m, h, d or w,"
            " such as 90, 15m, 2h or 7d."
        )
    number, unit = match.groups()
    try:
        return timedelta(seconds=float(number) * _UNITS[unit.lower()])
    except OverflowError:
        raise ValueError(
            f"{text!r} is too long a duration; the longest is {timedelta.max.days:,} days."
        ) from None


def format_duration(delta: timedelta) -> str:
    """A short duration in the units :func:`parse_duration` reads: 42s, 5m07s, 3h02m, 2d04h."""
    seconds = max(int(delta.total_seconds()), 0)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def duration(key: str, value: Any) -> timedelta:
    """A positive duration: seconds, a ``timedelta``, or a string such as ``"2h"``."""
    if isinstance(value, str):
        # The same forms as on the command line: "90", "30s", "15m", "1h", "7d".
        try:
            delta = parse_duration(value)
        except ValueError as e:
            raise invalid(key, value, f"a duration such as 90, 15m, 2h or 7d ({e})") from e
    elif isinstance(value, timedelta):
        delta = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            delta = timedelta(seconds=value)
        except (OverflowError, ValueError):  # NaN, an infinity, or past a timedelta's range
            raise invalid(
                key, value, f"a finite number of seconds, at most {timedelta.max.days:,} days"
            ) from None
    else:
        raise invalid(key, value, "a number of seconds, a datetime.timedelta or a str like 2h")
    if delta <= timedelta(0):
        raise invalid(key, value, "a positive duration")
    if delta > LONGEST_DURATION:
        raise invalid(
            key, value, f"a duration of at most 100 years ({LONGEST_DURATION.days:,} days)"
        )
    return delta


def optional(convert: Converter[T]) -> Converter[T | None]:
    """``None``, or what ``convert`` accepts."""

    def convert_unless_none(key: str, value: Any) -> T | None:
        return None if value is None else convert(key, value)

    return convert_unless_none


def schedule(key: str, value: Any) -> crontab | timedelta:
    """A crontab string, or an interval (seconds or timedelta) for frequent runs."""
    if not isinstance(value, str):
        if isinstance(value, (int, float, timedelta)) and not isinstance(value, bool):
            return duration(key, value)
        raise invalid(
            key, value, 'a crontab string such as "0 0 * * *", or a number of seconds between runs'
        )
    if len(value.split()) != 5:
        raise invalid(key, value, 'a crontab string of five fields, such as "0 0 * * *"')
    minute, hour, day_of_month, month_of_year, day_of_week = value.split()
    try:
        return crontab(
            minute=minute,
            hour=hour,
            day_of_month=day_of_month,
            month_of_year=month_of_year,
            day_of_week=day_of_week,
        )
    except ValueError as e:
        raise invalid(key, value, f"a valid crontab string ({e})") from e


def boolean(key: str, value: Any) -> bool:
    """``True`` or ``False``, nothing that merely looks true."""
    if not isinstance(value, bool):
        raise invalid(key, value, "True or False")
    return value


def boolean_or_auto(key: str, value: Any) -> bool | str:
    """``True``, ``False`` or ``"auto"``."""
    if isinstance(value, bool) or value == "auto":
        return value  # type: ignore[no-any-return]
    raise invalid(key, value, 'True, False or "auto"')


def whole_seconds(key: str, value: Any) -> int:
    """A whole number of seconds, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(key, value, "a whole number of seconds (>= 0)")
    return value


#: A per-owner limit: a number, or a callable of the owner that returns one (``None``: none).
OwnerLimit = int | Callable[[str], int | None] | None


def owner_limit(key: str, value: Any) -> OwnerLimit:
    """``None`` (no limit), a whole number >= 1, or a callable of the owner returning one.

    A callable is the app's tiers: it is called with the owner's identity each
    time the limit applies, and may return ``None`` for an owner with no limit.
    """
    if value is None or callable(value):
        return value  # type: ignore[no-any-return]
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise invalid(
            key, value, "None, a whole number >= 1, or a callable of the owner returning one"
        )
    return value


def byte_size(key: str, value: Any) -> int:
    """A number of bytes, 0 or more."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(key, value, "a whole number of bytes (>= 0), such as 256 * 1024")
    return value


def retries(key: str, value: Any) -> int:
    """``False`` (or ``None``) for no retry, or a number of retries."""
    if value is False or value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(key, value, "False or a number of retries (an int >= 0)")
    return value


def choice(choices: Collection[str]) -> Converter[str]:
    """One of ``choices``."""

    def one_of(key: str, value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise invalid(key, value, f"one of {', '.join(sorted(choices))}")
        return value

    return one_of


def result_store(key: str, value: Any) -> ResultStore | None:
    """``"database"`` (``None``), a directory, an ``s3://bucket/prefix`` url, or a store object."""
    if isinstance(value, ResultStore):
        return value
    if value == "database":
        return None
    expected = (
        '"database", an absolute directory path (or file:// url), an s3://bucket/prefix url,'
        " or a ResultStore object"
    )
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise invalid(key, value, expected)
    if value.startswith("s3://"):
        try:
            return S3Store.from_url(value)
        except ValueError:
            raise invalid(key, value, expected) from None
    path = path_of(value) if value.startswith("file:") else Path(value)
    if path is None or not path.is_absolute():
        raise invalid(key, value, expected)
    return DirectoryStore(path)


def header_name(key: str, value: Any) -> str:
    """An HTTP header name."""
    if not isinstance(value, str) or not _HEADER_NAME.fullmatch(value):
        raise invalid(key, value, "an HTTP header name")
    return value


def internal_prefix(key: str, value: Any) -> str | None:
    """``None``, or a path starting and ending with ``/`` (one is added)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.startswith("/"):
        raise invalid(key, value, 'None, or an internal location\'s path such as "/results/"')
    return value if value.endswith("/") else value + "/"


def path_prefix(key: str, value: Any) -> str:
    """A path starting with ``/``, or ``""``, without its trailing slash."""
    if not isinstance(value, str) or (value and not value.startswith("/")):
        raise invalid(key, value, 'a path starting with "/", or ""')
    return value.rstrip("/")


def queue_name(key: str, value: Any) -> str | None:
    """A Celery queue's name, or ``None`` for Celery's default queue."""
    if value is not None and (not isinstance(value, str) or not value):
        raise invalid(key, value, "None (Celery's default queue) or a queue name")
    return value


def secret(key: str, value: Any) -> str | bytes | None:
    """A non-empty str or bytes secret, or ``None``; the error never shows the value."""
    if value is not None and (not isinstance(value, (str, bytes)) or not value):
        raise invalid(key, "<key>", "a non-empty str or bytes secret")
    return value


#: The shortest HMAC key (bytes) RFC 7518 allows for each algorithm: the hash's size.
HMAC_MINIMUM = {"HS256": 32, "HS384": 48, "HS512": 64}

#: Algorithms whose keys are one shared secret.
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
#: Algorithms signed with a private key and verified with a public key.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS
_supported_algorithm = choice(SUPPORTED_ALGORITHMS)


def jwt_algorithm(key: str, value: Any) -> str:
    """A supported JWT algorithm whose implementation imports."""
    algorithm = _supported_algorithm(key, value)
    # PyJWT offers the RSA, RSA-PSS and EC algorithms only when cryptography imports.
    if algorithm in ASYMMETRIC_ALGORITHMS and not jwt.algorithms.has_crypto:
        raise ConfigurationError(
            f"{key} is {algorithm!r}, which needs the cryptography package; install it with"
            " pip install flask-async-request[rsa], or use an HS algorithm."
        )
    return algorithm


def key_material(key: str, value: Any) -> Any:
    """A key as given: a secret, a PEM string or a key object, checked with its algorithm."""
    return value
