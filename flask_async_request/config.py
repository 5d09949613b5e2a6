"""The settings: one table of keys, defaults, meanings and converters, and their validation.

Each setting is one field of :class:`Settings`, declared with :func:`_setting`: its
key, default, meaning and converter ride in the field's metadata, and
:data:`SETTINGS`, :data:`DEFAULTS`, the docs' table, the README's and the snippet
of ``flask async-request init`` are all made from those fields. Adding a setting
is adding a field.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import MutableMapping
from datetime import timedelta
from typing import Any, TypeVar

import jwt
import jwt.algorithms
from celery.schedules import crontab

from .converters import (
    HMAC_ALGORITHMS,
    HMAC_MINIMUM,
    Converter,
    boolean,
    boolean_or_auto,
    byte_size,
    duration,
    header_name,
    internal_prefix,
    invalid,
    jwt_algorithm,
    key_material,
    optional,
    owner_limit,
    path_prefix,
    queue_name,
    result_store,
    retries,
    schedule,
    secret,
    whole_seconds,
)

# The command line and the dashboard read and write durations as the settings do.
from .converters import OwnerLimit as OwnerLimit
from .converters import format_duration as format_duration
from .converters import parse_duration as parse_duration
from .exceptions import ConfigurationError
from .storage import ResultStore

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Setting:
    """One setting: its key, default and meaning, and how the extension reads it."""

    #: The key in the app's config.
    key: str
    #: The value a key the app's config does not set takes.
    default: Any
    #: What the setting does and which values it takes, in reST. The docs, the README
    #: and the settings snippet of ``flask async-request init`` all show this text.
    meaning: str
    #: Turns the config's value into the value of :attr:`attribute`, or raises
    #: :exc:`~flask_async_request.ConfigurationError` naming the key. ``None`` for
    #: ``CELERY``, which the extension hands to Celery as it is.
    convert: Converter[Any] | None = None
    #: The attribute of :class:`Settings` that holds the converted value; ``None``
    #: for ``CELERY``.
    attribute: str | None = None


def _setting(key: str, default: object, meaning: str, convert: Converter[T]) -> T:
    """A field of :class:`Settings`, with its row of the table in its metadata.

    Typed as the converter's result, so mypy checks it against the field's type.
    """
    field: T = dataclasses.field(metadata={"setting": Setting(key, default, meaning, convert)})
    return field


class InsecureKeyWarning(UserWarning):
    """A token key is shorter than its algorithm needs to be safe."""


@dataclasses.dataclass(frozen=True)
class Settings:
    """The validated settings of one app, read once in ``init_app``.

    Each field is one setting, in the order the docs list them.
    """

    algorithm: str = _setting(
        "ASYNC_REQUEST_SIGN_ALGORITHM",
        "HS256",
        "JWT algorithm that signs job tokens: HS256/384/512, RS256/384/512, PS256/384/512"
        " or ES256/384/512.",
        jwt_algorithm,
    )
    encode_key: Any = _setting(
        "ASYNC_REQUEST_ENCODE_KEY",
        None,
        "Key that signs tokens; ``None`` means ``SECRET_KEY``. RS, PS and ES algorithms need"
        " a PEM private key.",
        key_material,
    )
    decode_key: Any = _setting(
        "ASYNC_REQUEST_DECODE_KEY",
        None,
        "Key that verifies tokens; ``None`` means ``SECRET_KEY``, or for RS, PS and ES the"
        " public half of the encode key.",
        key_material,
    )
    token_expiration: timedelta = _setting(
        "ASYNC_REQUEST_TOKEN_EXPIRATION",
        timedelta(days=1),
        "How long a job's token is valid: seconds or a ``timedelta``.",
        duration,
    )
    header_key: str = _setting(
        "ASYNC_REQUEST_HEADER_KEY",
        "X-JOB-AUTHORIZATION",
        "Request header that carries the token.",
        header_name,
    )
    url_prefix: str = _setting(
        "ASYNC_REQUEST_URL_PREFIX",
        "/async_request",
        "Where the status endpoint is mounted.",
        path_prefix,
    )
    token_in_url: bool = _setting(
        "ASYNC_REQUEST_TOKEN_IN_URL",
        True,
        "Give each job a status url of its own, with its token in the path (``Location`` and"
        " ``url`` of the 202), so any client can follow it; ``False`` keeps the token in the"
        " header only.",
        boolean,
    )
    queue: str | None = _setting(
        "ASYNC_REQUEST_QUEUE",
        None,
        "Celery queue the jobs and the beat tasks are sent to; ``None`` means Celery's"
        " default queue.",
        queue_name,
    )
    time_limit: timedelta | None = _setting(
        "ASYNC_REQUEST_TIME_LIMIT",
        None,
        "How long a job may run before it fails with a time-limit error: seconds or a"
        " ``timedelta``; ``None`` means no limit. A worker class's ``time_limit`` overrides it.",
        optional(duration),
    )
    retry: int = _setting(
        "ASYNC_REQUEST_RETRY",
        False,
        "``False``, or how many times a raising job is run again, after 1, 2, 4 ... seconds.",
        retries,
    )
    clean_jobs: bool = _setting(
        "ASYNC_REQUEST_CLEAN_JOBS",
        True,
        "Purge old finished jobs periodically (needs Celery beat).",
        boolean,
    )
    clean_jobs_cron: crontab | timedelta = _setting(
        "ASYNC_REQUEST_CLEAN_JOBS_CRON",
        "0 0 * * *",
        "When the purge runs: a crontab string, or seconds (or a ``timedelta``) between runs.",
        schedule,
    )
    jobs_expiration: timedelta = _setting(
        "ASYNC_REQUEST_JOBS_EXPIRATION",
        timedelta(hours=24),
        "Age at which finished jobs are purged: seconds or a ``timedelta``. A worker class's"
        " ``retention`` overrides it.",
        duration,
    )
    failed_jobs_expiration: timedelta | None = _setting(
        "ASYNC_REQUEST_FAILED_JOBS_EXPIRATION",
        None,
        "Age at which failed jobs are purged, to keep them longer (or shorter) for inspection;"
        " ``None``: as other finished jobs. A worker class's ``failed_retention`` overrides it.",
        optional(duration),
    )
    lease: timedelta = _setting(
        "ASYNC_REQUEST_LEASE",
        timedelta(seconds=60),
        "A running job's lease, renewed by its worker; a job silent this long has lost its worker.",
        duration,
    )
    waiting_timeout: timedelta = _setting(
        "ASYNC_REQUEST_WAITING_TIMEOUT",
        timedelta(minutes=5),
        "A waiting job that no worker claimed this long after it was due is published again.",
        duration,
    )
    sweep_interval: timedelta | None = _setting(
        "ASYNC_REQUEST_SWEEP_INTERVAL",
        timedelta(seconds=30),
        "How often beat, or the embedded worker, sweeps lost and stuck jobs; ``None`` turns"
        " the periodic sweep off.",
        optional(duration),
    )
    retry_after: int = _setting(
        "ASYNC_REQUEST_RETRY_AFTER",
        1,
        "Seconds a 202 asks the client to wait before it polls again (``Retry-After``).",
        whole_seconds,
    )
    max_wait: int = _setting(
        "ASYNC_REQUEST_MAX_WAIT",
        30,
        "Longest wait, in seconds, a poll may ask for with ``Prefer: wait=N``; 0 turns long"
        " polling off.",
        whole_seconds,
    )
    streams: bool | str = _setting(
        "ASYNC_REQUEST_STREAMS",
        "auto",
        "Whether a ``GET`` of a job's url with ``Accept: text/event-stream`` is answered with"
        " an event stream, held open until the job ends: ``True``, ``False`` (such a request"
        ' is answered as a long poll), or ``"auto"``: streams where the server can hold a'
        " request without holding a worker (a threaded server, ``wsgi.multithread``, or"
        " gevent or eventlet having patched the threads), long polls under sync workers.",
        boolean_or_auto,
    )
    stream_heartbeat: timedelta = _setting(
        "ASYNC_REQUEST_STREAM_HEARTBEAT",
        timedelta(seconds=15),
        "How long an event stream may stay silent before it sends a comment, which keeps"
        " proxies from closing it: seconds or a ``timedelta``.",
        duration,
    )
    stream_max_duration: timedelta = _setting(
        "ASYNC_REQUEST_STREAM_MAX_DURATION",
        timedelta(minutes=5),
        "The longest an event stream stays open; it then ends with a ``retry:`` hint, and the"
        " client reconnects with ``Last-Event-ID``: seconds or a ``timedelta``.",
        duration,
    )
    result_store_threshold: int = _setting(
        "ASYNC_REQUEST_RESULT_STORE_THRESHOLD",
        256 * 1024,
        "Text replies larger than this many bytes (UTF-8), and every binary reply, go to the"
        " result store, in chunks, and are downloaded from the job's result url; smaller text"
        " replies stay in the jobs table and in the JSON of the status url. On MariaDB and"
        " MySQL, whose ``TEXT`` holds 64 KiB, at most 65,535 whatever this says.",
        byte_size,
    )
    redirect_finished: bool = _setting(
        "ASYNC_REQUEST_REDIRECT_FINISHED",
        False,
        "Answer a poll of a processed job with ``303 See Other`` and its result url in"
        " ``Location``, for clients that download by following ``Location`` alone; ``False``"
        " answers 200 with the JSON envelope, as the gem's clients expect.",
        boolean,
    )
    link_expiration: timedelta = _setting(
        "ASYNC_REQUEST_LINK_EXPIRATION",
        timedelta(minutes=5),
        "How long a signed download link of a job's result (``download_href``,"
        " ``download_url()``) is valid: seconds or a ``timedelta``.",
        duration,
    )
    result_store: ResultStore | None = _setting(
        "ASYNC_REQUEST_RESULT_STORE",
        "database",
        "Where replies above ``ASYNC_REQUEST_RESULT_STORE_THRESHOLD``, and binary ones, are"
        ' kept: ``"database"`` (a table of the app\'s database), a directory every process'
        " shares (an absolute path, or a ``file://`` url), an S3 bucket"
        ' (``"s3://bucket/prefix"``, through boto3), or a store object such as'
        " ``S3Store(bucket, client=...)``. Each result records where it is, so a change keeps"
        " the results stored before it.",
        result_store,
    )
    x_accel_redirect: str | None = _setting(
        "ASYNC_REQUEST_X_ACCEL_REDIRECT",
        None,
        'nginx\'s internal location of the directory store (``"/results/"``): the result url'
        " of a result in the directory answers with ``X-Accel-Redirect`` and no body, for nginx"
        " to send the file; ``None``: Flask's ``USE_X_SENDFILE`` decides (``X-Sendfile``).",
        internal_prefix,
    )
    owner_max_in_flight: OwnerLimit = _setting(
        "ASYNC_REQUEST_OWNER_MAX_IN_FLIGHT",
        None,
        "Most jobs one owner may have waiting or processing: a new job past it is refused with"
        " ``429`` and ``Retry-After`` (``OwnerLimitExceeded``). A whole"
        " number, or a callable of the owner returning one or ``None`` (tiers); ``None``: no"
        " cap. Jobs with no owner are not limited.",
        owner_limit,
    )
    owner_rate: OwnerLimit = _setting(
        "ASYNC_REQUEST_OWNER_RATE",
        None,
        "Most jobs one owner may create in any ``ASYNC_REQUEST_OWNER_RATE_PERIOD``: past it,"
        " ``429`` with ``Retry-After`` until the oldest of them leaves the window. A whole"
        " number, or a callable of the owner returning one or ``None``; ``None``: no rate.",
        owner_limit,
    )
    owner_rate_period: timedelta = _setting(
        "ASYNC_REQUEST_OWNER_RATE_PERIOD",
        timedelta(minutes=1),
        "The sliding window of ``ASYNC_REQUEST_OWNER_RATE``: seconds or a ``timedelta``.",
        duration,
    )
    owner_max_running: OwnerLimit = _setting(
        "ASYNC_REQUEST_OWNER_MAX_RUNNING",
        None,
        "Most jobs of one owner that run at once: a job past it, as it is stored or claimed,"
        " is parked (left waiting, not sent) until one of the owner's jobs ends, so that one"
        " owner's backlog waits in the jobs table, not in the queue in front of the others."
        " A whole number, or a callable of the owner returning one or ``None``; ``None``: no"
        " cap.",
        owner_limit,
    )
    owner_defer: timedelta = _setting(
        "ASYNC_REQUEST_OWNER_DEFER",
        timedelta(seconds=30),
        "A job parked by ``ASYNC_REQUEST_OWNER_MAX_RUNNING`` is sent again as soon as one of"
        " its owner's jobs ends; failing that, it is due again this long after it was parked,"
        " and the sweeper sends it ``ASYNC_REQUEST_WAITING_TIMEOUT`` later, as any waiting job"
        " that no worker claimed.",
        duration,
    )
    callback_key: str | bytes | None = _setting(
        "ASYNC_REQUEST_CALLBACK_KEY",
        None,
        "Key that signs completion callbacks; ``None`` means ``SECRET_KEY``.",
        secret,
    )
    callback_allow_private: bool = _setting(
        "ASYNC_REQUEST_CALLBACK_ALLOW_PRIVATE",
        False,
        "Deliver completion callbacks to loopback, private, link-local and other non-public"
        " addresses too; by default they are refused.",
        boolean,
    )


#: The rows of the fields of :class:`Settings`, each with its attribute's name.
_FIELD_ROWS = tuple(
    dataclasses.replace(field.metadata["setting"], attribute=field.name)
    for field in dataclasses.fields(Settings)
)

#: Every setting the extension reads, in the order the docs list them. This is the
#: one table of keys, defaults and meanings: :data:`DEFAULTS`, the settings snippet
#: and the docs' configuration table are made from it. Its rows after ``CELERY``
#: are the fields of :class:`Settings`.
SETTINGS: dict[str, Setting] = {
    "CELERY": Setting(
        "CELERY",
        {},
        "Celery settings, with Celery's lowercase names (``broker_url``, ``result_backend``"
        " ...); without ``broker_url`` jobs run in the web process (embedded mode, for"
        " development).",
    ),
    **{row.key: row for row in _FIELD_ROWS},
}

#: The defaults ``load_settings()`` fills in. ``CELERY`` is not among them: the
#: Celery app is made from it (``broker.py``), which gives each app a dict of its own.
DEFAULTS: dict[str, Any] = {row.key: row.default for row in _FIELD_ROWS}


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


def _keys(settings: Settings, secret_key: object) -> tuple[Any, Any]:
    """Prepare the signing and verifying keys, so a bad key fails at start-up."""
    algorithm = settings.algorithm
    algo = jwt.get_algorithm_by_name(algorithm)
    encode_key, decode_key = settings.encode_key, settings.decode_key
    if algorithm in HMAC_ALGORITHMS:
        encode_key = secret_key if encode_key is None else encode_key
        decode_key = secret_key if decode_key is None else decode_key
        for key, value in (
            ("ASYNC_REQUEST_ENCODE_KEY", encode_key),
            ("ASYNC_REQUEST_DECODE_KEY", decode_key),
        ):
            if not isinstance(value, (str, bytes)) or not value:
                raise invalid(
                    key,
                    value,
                    f"a non-empty str or bytes secret for {algorithm} (it defaults to SECRET_KEY,"
                    " which is not set either)",
                )
            try:
                algo.prepare_key(value)
            except jwt.InvalidKeyError as e:
                raise invalid(key, "<key>", f"an HMAC secret, not a PEM key ({e})") from e
            minimum = HMAC_MINIMUM[algorithm]
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
        raise invalid(
            "ASYNC_REQUEST_ENCODE_KEY", "<key>", f"a PEM private key for {algorithm}"
        ) from e
    if not hasattr(private, "sign"):
        raise invalid(
            "ASYNC_REQUEST_ENCODE_KEY", "<public key>", f"a PEM private key for {algorithm}"
        )
    if decode_key is None:
        # The public half of the signing key verifies its own tokens.
        return private, private.public_key()
    try:
        public = algo.prepare_key(decode_key)
    except (jwt.InvalidKeyError, ValueError, TypeError) as e:
        raise invalid(
            "ASYNC_REQUEST_DECODE_KEY", "<key>", f"a PEM public key for {algorithm}"
        ) from e
    if hasattr(public, "sign"):
        public = public.public_key()
    return private, public


def load_settings(config: MutableMapping[str, Any]) -> Settings:
    """Fill in the defaults of ``config`` and validate every ``ASYNC_REQUEST_*`` key.

    Each key is converted by its row, in the table's order; then the token keys are
    checked against the algorithm, and the keys left ``None`` take ``SECRET_KEY``.

    :raises ConfigurationError: naming the first key with a wrong type or value.
    """
    for key, value in DEFAULTS.items():
        config.setdefault(key, value)

    unknown = sorted(k for k in config if k.startswith("ASYNC_REQUEST_") and k not in DEFAULTS)
    if unknown:
        raise ConfigurationError(
            f"Unknown setting {unknown[0]!r}; the known ones are {', '.join(sorted(DEFAULTS))}."
        )

    converted = {}
    for field in dataclasses.fields(Settings):
        row = field.metadata["setting"]
        converted[field.name] = row.convert(row.key, config[row.key])
    settings = Settings(**converted)

    secret_key = config.get("SECRET_KEY")
    encode_key, decode_key = _keys(settings, secret_key)
    callback_key = settings.callback_key
    if callback_key is None:
        callback_key = secret("ASYNC_REQUEST_CALLBACK_KEY", secret_key or None)
    return dataclasses.replace(
        settings, encode_key=encode_key, decode_key=decode_key, callback_key=callback_key
    )
