"""Defaults and validation of the ``ASYNC_REQUEST_*`` settings."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, MutableMapping
from datetime import timedelta
from typing import Any

import jwt
from celery.schedules import crontab

from .exceptions import ConfigurationError

DEFAULTS: dict[str, Any] = {
    "ASYNC_REQUEST_SIGN_ALGORITHM": "HS256",
    "ASYNC_REQUEST_ENCODE_KEY": None,
    "ASYNC_REQUEST_DECODE_KEY": None,
    "ASYNC_REQUEST_TOKEN_EXPIRATION": timedelta(days=1),
    "ASYNC_REQUEST_HEADER_KEY": "X-JOB-AUTHORIZATION",
    "ASYNC_REQUEST_URL_PREFIX": "/async_request",
    "ASYNC_REQUEST_QUEUE": None,
    "ASYNC_REQUEST_RETRY": False,
    "ASYNC_REQUEST_CLEAN_JOBS": True,
    "ASYNC_REQUEST_CLEAN_JOBS_CRON": "0 0 * * *",
    "ASYNC_REQUEST_JOBS_EXPIRATION": timedelta(hours=24),
    "ASYNC_REQUEST_LEASE": timedelta(seconds=60),
    "ASYNC_REQUEST_WAITING_TIMEOUT": timedelta(minutes=5),
    "ASYNC_REQUEST_SWEEP_INTERVAL": timedelta(seconds=30),
    "ASYNC_REQUEST_RETRY_AFTER": 1,
    "ASYNC_REQUEST_MAX_WAIT": 30,
    "ASYNC_REQUEST_CALLBACK_KEY": None,
    "ASYNC_REQUEST_CALLBACK_ALLOW_PRIVATE": False,
}

#: Algorithms whose keys are one shared secret.
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
#: Algorithms signed with a private key and verified with a public key.
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)
SUPPORTED_ALGORITHMS = HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS

_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated settings of one app, read once in ``init_app``."""

    algorithm: str
    encode_key: Any
    decode_key: Any
    token_expiration: timedelta
    header_key: str
    url_prefix: str
    queue: str | None
    retry: int
    clean_jobs: bool
    clean_jobs_cron: crontab | timedelta
    jobs_expiration: timedelta
    lease: timedelta
    waiting_timeout: timedelta
    sweep_interval: timedelta | None
    retry_after: int
    max_wait: int
    callback_key: str | bytes | None
    callback_allow_private: bool


def parse_duration(text: str) -> timedelta:
    """Parse ``"90"``, ``"30s"``, ``"15m"``, ``"2h"``, ``"7d"`` or ``"1w"`` into a timedelta.

    :raises ValueError: for anything else.
    """
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration; use a number with an optional unit s, m, h, d or w,"
            " such as 90, 15m, 2h or 7d."
        )
    number, unit = match.groups()
    return timedelta(seconds=float(number) * _UNITS[unit.lower()])


def _fail(key: str, got: object, expected: str) -> ConfigurationError:
    return ConfigurationError(f"{key} is {got!r}; expected {expected}.")


def _duration(config: Mapping[str, Any], key: str) -> timedelta:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, float, timedelta)):
        raise _fail(key, value, "a number of seconds or a datetime.timedelta")
    if not isinstance(value, timedelta):
        value = timedelta(seconds=value)
    if value <= timedelta(0):
        raise _fail(key, config[key], "a positive duration")
    return value


def _schedule(config: Mapping[str, Any], key: str) -> crontab | timedelta:
    """A crontab string, or an interval (seconds or timedelta) for frequent runs."""
    value = config[key]
    if not isinstance(value, str):
        if isinstance(value, (int, float, timedelta)) and not isinstance(value, bool):
            return _duration(config, key)
        raise _fail(
            key, value, 'a crontab string such as "0 0 * * *", or a number of seconds between runs'
        )
    if len(value.split()) != 5:
        raise _fail(key, value, 'a crontab string of five fields, such as "0 0 * * *"')
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
        raise _fail(key, value, f"a valid crontab string ({e})") from e


def _keys(config: Mapping[str, Any], algorithm: str) -> tuple[Any, Any]:
    """Prepare the signing and verifying keys, so a bad key fails at start-up."""
    algo = jwt.get_algorithm_by_name(algorithm)
    encode_key = config["ASYNC_REQUEST_ENCODE_KEY"]
    decode_key = config["ASYNC_REQUEST_DECODE_KEY"]
    if algorithm in HMAC_ALGORITHMS:
        secret = config.get("SECRET_KEY")
        encode_key = secret if encode_key is None else encode_key
        decode_key = secret if decode_key is None else decode_key
        for key, value in (
            ("ASYNC_REQUEST_ENCODE_KEY", encode_key),
            ("ASYNC_REQUEST_DECODE_KEY", decode_key),
        ):
            if not isinstance(value, (str, bytes)) or not value:
                raise _fail(
                    key,
                    value,
                    f"a non-empty str or bytes secret for {algorithm} (it defaults to SECRET_KEY,"
                    " which is not set either)",
                )
            try:
                algo.prepare_key(value)
            except jwt.InvalidKeyError as e:
                raise _fail(key, "<key>", f"an HMAC secret, not a PEM key ({e})") from e
        return encode_key, decode_key

    if encode_key is None:
        raise ConfigurationError(
            f"ASYNC_REQUEST_ENCODE_KEY is not set; {algorithm} needs a PEM private key to sign"
            " tokens (SECRET_KEY is not used for asymmetric algorithms)."
        )
    try:
        private = algo.prepare_key(encode_key)
    except (jwt.InvalidKeyError, ValueError, TypeError) as e:
        raise _fail(
            "ASYNC_REQUEST_ENCODE_KEY", "<key>", f"a PEM private key for {algorithm}"
        ) from e
    if not hasattr(private, "sign"):
        raise _fail(
            "ASYNC_REQUEST_ENCODE_KEY", "<public key>", f"a PEM private key for {algorithm}"
        )
    if decode_key is None:
        # The public half of the signing key verifies its own tokens.
        return private, private.public_key()
    try:
        public = algo.prepare_key(decode_key)
    except (jwt.InvalidKeyError, ValueError, TypeError) as e:
        raise _fail("ASYNC_REQUEST_DECODE_KEY", "<key>", f"a PEM public key for {algorithm}") from e
    if hasattr(public, "sign"):
        public = public.public_key()
    return private, public


def load_settings(config: MutableMapping[str, Any]) -> Settings:
    """Fill in the defaults of ``config`` and validate every ``ASYNC_REQUEST_*`` key.

    :raises ConfigurationError: naming the first key with a wrong type or value.
    """
    for key, value in DEFAULTS.items():
        config.setdefault(key, value)

    unknown = sorted(k for k in config if k.startswith("ASYNC_REQUEST_") and k not in DEFAULTS)
    if unknown:
        raise ConfigurationError(
            f"Unknown setting {unknown[0]!r}; the known ones are {', '.join(sorted(DEFAULTS))}."
        )

    algorithm = config["ASYNC_REQUEST_SIGN_ALGORITHM"]
    if algorithm not in SUPPORTED_ALGORITHMS:
        raise _fail(
            "ASYNC_REQUEST_SIGN_ALGORITHM",
            algorithm,
            f"one of {', '.join(sorted(SUPPORTED_ALGORITHMS))}",
        )
    encode_key, decode_key = _keys(config, algorithm)

    header_key = config["ASYNC_REQUEST_HEADER_KEY"]
    if not isinstance(header_key, str) or not _HEADER_NAME.match(header_key):
        raise _fail("ASYNC_REQUEST_HEADER_KEY", header_key, "an HTTP header name")

    url_prefix = config["ASYNC_REQUEST_URL_PREFIX"]
    if not isinstance(url_prefix, str) or (url_prefix and not url_prefix.startswith("/")):
        raise _fail("ASYNC_REQUEST_URL_PREFIX", url_prefix, 'a path starting with "/", or ""')

    queue = config["ASYNC_REQUEST_QUEUE"]
    if queue is not None and (not isinstance(queue, str) or not queue):
        raise _fail("ASYNC_REQUEST_QUEUE", queue, "None (Celery's default queue) or a queue name")

    retry = config["ASYNC_REQUEST_RETRY"]
    if retry is False or retry is None:
        retry = 0
    elif isinstance(retry, bool) or not isinstance(retry, int) or retry < 0:
        raise _fail("ASYNC_REQUEST_RETRY", retry, "False or a number of retries (an int >= 0)")

    retry_after = config["ASYNC_REQUEST_RETRY_AFTER"]
    if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
        raise _fail("ASYNC_REQUEST_RETRY_AFTER", retry_after, "a whole number of seconds (>= 0)")

    max_wait = config["ASYNC_REQUEST_MAX_WAIT"]
    if isinstance(max_wait, bool) or not isinstance(max_wait, int) or max_wait < 0:
        raise _fail("ASYNC_REQUEST_MAX_WAIT", max_wait, "a whole number of seconds (>= 0)")

    callback_key = config["ASYNC_REQUEST_CALLBACK_KEY"]
    if callback_key is None:
        callback_key = config.get("SECRET_KEY") or None
    if callback_key is not None and (
        not isinstance(callback_key, (str, bytes)) or not callback_key
    ):
        raise _fail("ASYNC_REQUEST_CALLBACK_KEY", "<key>", "a non-empty str or bytes secret")

    clean_jobs = config["ASYNC_REQUEST_CLEAN_JOBS"]
    if not isinstance(clean_jobs, bool):
        raise _fail("ASYNC_REQUEST_CLEAN_JOBS", clean_jobs, "True or False")

    allow_private = config["ASYNC_REQUEST_CALLBACK_ALLOW_PRIVATE"]
    if not isinstance(allow_private, bool):
        raise _fail("ASYNC_REQUEST_CALLBACK_ALLOW_PRIVATE", allow_private, "True or False")

    return Settings(
        algorithm=algorithm,
        encode_key=encode_key,
        decode_key=decode_key,
        token_expiration=_duration(config, "ASYNC_REQUEST_TOKEN_EXPIRATION"),
        header_key=header_key,
        url_prefix=url_prefix.rstrip("/"),
        queue=queue,
        retry=retry,
        clean_jobs=clean_jobs,
        clean_jobs_cron=_schedule(config, "ASYNC_REQUEST_CLEAN_JOBS_CRON"),
        jobs_expiration=_duration(config, "ASYNC_REQUEST_JOBS_EXPIRATION"),
        lease=_duration(config, "ASYNC_REQUEST_LEASE"),
        waiting_timeout=_duration(config, "ASYNC_REQUEST_WAITING_TIMEOUT"),
        sweep_interval=(
            None
            if config["ASYNC_REQUEST_SWEEP_INTERVAL"] is None
            else _duration(config, "ASYNC_REQUEST_SWEEP_INTERVAL")
        ),
        retry_after=retry_after,
        max_wait=max_wait,
        callback_key=callback_key,
        callback_allow_private=allow_private,
    )
