"""The settings: one table of keys, defaults and meanings, and their validation."""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping, MutableMapping
from datetime import timedelta
from typing import Any

import jwt
import jwt.algorithms
from celery.schedules import crontab

from .exceptions import ConfigurationError


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its default and what it means."""

    #: The value a key the app's config does not set takes.
    default: Any
    #: What the setting does and which values it takes, in reST. The docs, the README
    #: and the settings snippet of ``flask async-request init`` all show this text.
    meaning: str


#: Every setting the extension reads, in the order the docs list them. This is the
#: one table of keys, defaults and meanings: :data:`DEFAULTS`, the settings snippet
#: and the docs' configuration table are made from it.
SETTINGS: dict[str, Setting] = {
    "CELERY": Setting(
        {},
        "Celery settings, with Celery's lowercase names (``broker_url``, ``result_backend``"
        " ...); without ``broker_url`` jobs run in the web process (embedded mode, for"
        " development).",
    ),
    "ASYNC_REQUEST_SIGN_ALGORITHM": Setting(
        "HS256",
        "JWT algorithm that signs job tokens: HS256/384/512, RS256/384/512, PS256/384/512"
        " or ES256/384/512.",
    ),
    "ASYNC_REQUEST_ENCODE_KEY": Setting(
        None,
        "Key that signs tokens; ``None`` means ``SECRET_KEY``. RS, PS and ES algorithms need"
        " a PEM private key.",
    ),
    "ASYNC_REQUEST_DECODE_KEY": Setting(
        None,
        "Key that verifies tokens; ``None`` means ``SECRET_KEY``, or for RS, PS and ES the"
        " public half of the encode key.",
    ),
    "ASYNC_REQUEST_TOKEN_EXPIRATION": Setting(
        timedelta(days=1),
        "How long a job's token is valid: seconds or a ``timedelta``.",
    ),
    "ASYNC_REQUEST_HEADER_KEY": Setting(
        "X-JOB-AUTHORIZATION",
        "Request header that carries the token.",
    ),
    "ASYNC_REQUEST_URL_PREFIX": Setting(
        "/async_request",
        "Where the status endpoint is mounted.",
    ),
    "ASYNC_REQUEST_TOKEN_IN_URL": Setting(
        True,
        "Give each job a status url of its own, with its token in the path (``Location`` and"
        " ``url`` of the 202), so any client can follow it; ``False`` keeps the token in the"
        " header only.",
    ),
    "ASYNC_REQUEST_QUEUE": Setting(
        None,
        "Celery queue the jobs and the beat tasks are sent to; ``None`` means Celery's"
        " default queue.",
    ),
    "ASYNC_REQUEST_TIME_LIMIT": Setting(
        None,
        "How long a job may run before it fails with a time-limit error: seconds or a"
        " ``timedelta``; ``None`` means no limit. A worker class's ``time_limit`` overrides it.",
    ),
    "ASYNC_REQUEST_RETRY": Setting(
        False,
        "``False``, or how many times a raising job is run again, after 1, 2, 4 ... seconds.",
    ),
    "ASYNC_REQUEST_CLEAN_JOBS": Setting(
        True,
        "Purge old finished jobs periodically (needs Celery beat).",
    ),
    "ASYNC_REQUEST_CLEAN_JOBS_CRON": Setting(
        "0 0 * * *",
        "When the purge runs: a crontab string, or seconds (or a ``timedelta``) between runs.",
    ),
    "ASYNC_REQUEST_JOBS_EXPIRATION": Setting(
        timedelta(hours=24),
        "Age at which finished jobs are purged: seconds or a ``timedelta``. A worker class's"
        " ``retention`` overrides it.",
    ),
    "ASYNC_REQUEST_FAILED_JOBS_EXPIRATION": Setting(
        None,
        "Age at which failed jobs are purged, to keep them longer (or shorter) for inspection;"
        " ``None``: as other finished jobs. A worker class's ``failed_retention`` overrides it.",
    ),
    "ASYNC_REQUEST_LEASE": Setting(
        timedelta(seconds=60),
        "A running job's lease, renewed by its worker; a job silent this long has lost its worker.",
    ),
    "ASYNC_REQUEST_WAITING_TIMEOUT": Setting(
        timedelta(minutes=5),
        "A waiting job that no worker claimed this long after it was due is published again.",
    ),
    "ASYNC_REQUEST_SWEEP_INTERVAL": Setting(
        timedelta(seconds=30),
        "How often beat sweeps lost and stuck jobs; ``None`` turns the sweeper off.",
    ),
    "ASYNC_REQUEST_RETRY_AFTER": Setting(
        1,
        "Seconds a 202 asks the client to wait before it polls again (``Retry-After``).",
    ),
    "ASYNC_REQUEST_MAX_WAIT": Setting(
        30,
        "Longest wait, in seconds, a poll may ask for with ``Prefer: wait=N``; 0 turns long"
        " polling off.",
    ),
    "ASYNC_REQUEST_CALLBACK_KEY": Setting(
        None,
        "Key that signs completion callbacks; ``None`` means ``SECRET_KEY``.",
    ),
    "ASYNC_REQUEST_CALLBACK_ALLOW_PRIVATE": Setting(
        False,
        "Deliver completion callbacks to loopback, private, link-local and other non-public"
        " addresses too; by default they are refused.",
    ),
}

#: The defaults ``load_settings()`` fills in. ``CELERY`` is not among them: the
#: Celery app is made from it (``broker.py``), which gives each app a dict of its own.
DEFAULTS: dict[str, Any] = {
    key: setting.default for key, setting in SETTINGS.items() if key.startswith("ASYNC_REQUEST_")
}


class InsecureKeyWarning(UserWarning):
    """A token key is shorter than its algorithm needs to be safe."""


#: The shortest HMAC key (bytes) RFC 7518 allows for each algorithm: the hash's size.
_HMAC_MINIMUM = {"HS256": 32, "HS384": 48, "HS512": 64}

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
    token_in_url: bool
    queue: str | None
    time_limit: timedelta | None
    retry: int
    clean_jobs: bool
    clean_jobs_cron: crontab | timedelta
    jobs_expiration: timedelta
    failed_jobs_expiration: timedelta | None
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


def default_source(value: object) -> str:
    """The Python source of a default, as the docs and the settings snippet write it.

    A ``timedelta`` is written in its largest whole unit (``timedelta(days=1)``),
    anything else as its ``repr``.
    """
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
        for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
            if seconds >= size and seconds % size == 0:
                return f"timedelta({unit}={int(seconds // size)})"
        return f"timedelta(seconds={int(seconds) if seconds.is_integer() else seconds})"
    return repr(value)


def _fail(key: str, got: object, expected: str) -> ConfigurationError:
    return ConfigurationError(f"{key} is {got!r}; expected {expected}.")


def _duration(config: Mapping[str, Any], key: str) -> timedelta:
    value = config[key]
    if isinstance(value, str):
        # The same forms as on the command line: "90", "30s", "15m", "1h", "7d".
        try:
            value = parse_duration(value)
        except ValueError as e:
            raise _fail(key, config[key], f"a duration such as 90, 15m, 2h or 7d ({e})") from e
    if isinstance(value, bool) or not isinstance(value, (int, float, timedelta)):
        raise _fail(key, value, "a number of seconds, a datetime.timedelta or a str like 2h")
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
            minimum = _HMAC_MINIMUM[algorithm]
            if len(value.encode() if isinstance(value, str) else value) < minimum:
                warnings.warn(
                    f"{key} (or the SECRET_KEY it defaults to) is shorter than {minimum} bytes,"
                    f" the least RFC 7518 asks of an {algorithm} key; anyone who guesses it can"
                    " sign tokens for every job. Use a long random key, such as"
                    " secrets.token_urlsafe(32).",
                    InsecureKeyWarning,
                    stacklevel=4,
                )
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
    # PyJWT offers the RSA, RSA-PSS and EC algorithms only when cryptography imports.
    if algorithm in ASYMMETRIC_ALGORITHMS and not jwt.algorithms.has_crypto:
        raise ConfigurationError(
            f"ASYNC_REQUEST_SIGN_ALGORITHM is {algorithm!r}, which needs the cryptography"
            " package; install it with pip install flask-async-request[rsa], or use an HS"
            " algorithm."
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

    token_in_url = config["ASYNC_REQUEST_TOKEN_IN_URL"]
    if not isinstance(token_in_url, bool):
        raise _fail("ASYNC_REQUEST_TOKEN_IN_URL", token_in_url, "True or False")

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
        token_in_url=token_in_url,
        queue=queue,
        time_limit=(
            None
            if config["ASYNC_REQUEST_TIME_LIMIT"] is None
            else _duration(config, "ASYNC_REQUEST_TIME_LIMIT")
        ),
        retry=retry,
        clean_jobs=clean_jobs,
        clean_jobs_cron=_schedule(config, "ASYNC_REQUEST_CLEAN_JOBS_CRON"),
        jobs_expiration=_duration(config, "ASYNC_REQUEST_JOBS_EXPIRATION"),
        failed_jobs_expiration=(
            None
            if config["ASYNC_REQUEST_FAILED_JOBS_EXPIRATION"] is None
            else _duration(config, "ASYNC_REQUEST_FAILED_JOBS_EXPIRATION")
        ),
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
