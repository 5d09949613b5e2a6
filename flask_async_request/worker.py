"""The :class:`Worker` base class and its resolution by dotted path."""

from __future__ import annotations

import importlib
import math
import os
from collections.abc import Iterable, Mapping
from datetime import timedelta
from http import HTTPStatus
from typing import IO, Any, Protocol

from werkzeug.wrappers import Response as BaseResponse

from .exceptions import InvalidReply, JobCancelled, WorkerResolutionError
from .models import column_length
from .values import short_repr, unstorable

#: Rack status names (the Rails symbols of the original gem) that differ from
#: :class:`http.HTTPStatus` member names.
_RACK_NAMES = {
    "payload_too_large": HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    "content_too_large": HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    "uri_too_long": HTTPStatus.REQUEST_URI_TOO_LONG,
    "range_not_satisfiable": HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
    "unprocessable_content": HTTPStatus.UNPROCESSABLE_ENTITY,
}

#: Characters of a returned value that an error message about it shows.
_ECHOED = 200


class RunLink(Protocol):
    """What a running worker reports its progress to (the runner gives one)."""

    def report(self, fraction: float, message: str | None) -> None:
        """Store progress; raise :class:`JobCancelled` once the job is no longer this run's."""

    def cancelled(self) -> bool:
        """Whether the job is no longer this run's."""


class CallableBool:
    """True or false like a bool, and callable too: calling it gives the bool.

    What :attr:`Worker.cancelled <flask_async_request.Worker.cancelled>` gives. It
    reads as a bool (``if self.cancelled:``, ``not``, ``==``), and
    ``self.cancelled()``, a natural slip beside the methods ``progress()`` and
    ``check_cancelled()``, gives the same answer instead of failing the job with
    "'bool' object is not callable". It is not the ``True`` or ``False`` object
    itself: compare it with ``==``, or ``bool()`` it, rather than with ``is``.
    """

    __slots__ = ("_value",)

    def __init__(self, value: bool) -> None:
        self._value = bool(value)

    def __bool__(self) -> bool:
        return self._value

    def __call__(self) -> bool:
        return self._value

    def __eq__(self, other: object) -> bool:
        if isinstance(other, CallableBool):
            return self._value == other._value
        if isinstance(other, int):  # bool included, as True == 1.
            return self._value == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._value)

    def __repr__(self) -> str:
        return repr(self._value)


_TRUE = CallableBool(True)
_FALSE = CallableBool(False)


#: The longest progress message stored; a longer one is cut.
_PROGRESS_MESSAGE_LENGTH = column_length("progress_message") or 255
#: The longest content type a reply can have.
_CONTENT_TYPE_LENGTH = column_length("content_type") or 255

Status = int | HTTPStatus | str
#: A reply's body: text, bytes, a file path, a binary file object or chunks of bytes.
Body = str | bytes | bytearray | memoryview | os.PathLike[str] | IO[bytes] | Iterable[bytes] | None
#: Headers a reply keeps (see ``payloads.KEPT_HEADERS``): a mapping or pairs.
HeaderItems = Mapping[str, str] | Iterable[tuple[str, str]]
#: What ``execute`` returns: ``(status, body)``, ``(status, body, content_type)``,
#: ``(status, body, content_type, headers)``, or a Flask or Werkzeug response.
Reply = (
    tuple[Status, Body]
    | tuple[Status, Body, str | None]
    | tuple[Status, Body, str | None, HeaderItems]
    | BaseResponse
)


class Worker:
    """Base class of the jobs that can be enqueued and run.

    Subclass it and implement :meth:`execute`; only subclasses can be enqueued,
    and a worker process refuses to run anything else. A new instance is made
    for every run, so instance attributes never leak between jobs.
    """

    #: The id of the job being run, set before :meth:`execute` is called.
    job_id: int | None = None

    #: Exceptions worth retrying when ``ASYNC_REQUEST_RETRY`` allows retries;
    #: any other exception fails the job at once. Narrow it to the transient
    #: errors of the work, for example ``(ConnectionError, TimeoutError)``.
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    #: The Celery queue this worker's jobs go to; ``None``: ``ASYNC_REQUEST_QUEUE``.
    #: It is stored with each job, so retries and the sweeper send it there too;
    #: start workers that consume it (``celery -A app worker -Q reports``).
    queue: str | None = None

    #: How long a job may run (seconds or a ``timedelta``); ``None``:
    #: ``ASYNC_REQUEST_TIME_LIMIT``. Past it the job fails with a time-limit
    #: error at once and :class:`~flask_async_request.TimeLimitExceeded` is
    #: raised in ``execute`` (catch it to clean up, then let it go); on prefork
    #: workers a job still running a few seconds later has its process replaced.
    time_limit: float | timedelta | None = None

    #: How long this worker's finished jobs are kept before the purge deletes them
    #: (seconds or a ``timedelta``); ``None``: ``ASYNC_REQUEST_JOBS_EXPIRATION``.
    #: Applies to jobs already stored too: the purge reads it when it runs.
    retention: float | timedelta | None = None

    #: How long this worker's failed jobs are kept, for inspection; ``None``:
    #: ``ASYNC_REQUEST_FAILED_JOBS_EXPIRATION`` when set, else :attr:`retention`.
    failed_retention: float | timedelta | None = None

    #: Commit the reply with the worker's own database writes, in one transaction.
    #:
    #: ``execute`` writes through the app's ``db.session`` and does not commit:
    #: the library stores the reply in the same transaction and commits both.
    #: A worker lost before that commit leaves no write behind, and an attempt
    #: that was cancelled or taken over meanwhile (its lease ran out and the
    #: sweeper ran the job again) is rolled back whole, so the job's writes are
    #: applied once. A failing ``execute`` rolls its writes back.
    transactional: bool = False

    #: The run this instance serves; ``None`` when ``execute`` is called directly.
    _run: RunLink | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A retention is read only by the purge, hours later: check it now.
        for name in ("retention", "failed_retention"):
            seconds_of(getattr(cls, name), f"{cls.__qualname__}.{name}")

    def progress(self, done: float, total: float | None = None, message: str | None = None) -> None:
        """Report how far the work got: a fraction (``0.4``) or ``done`` of ``total``.

        Polls of the job show it while it runs. Cheap enough for a tight loop:
        the database is written at most a few times a second. Raises
        :class:`~flask_async_request.JobCancelled` once the job was cancelled,
        which stops the work; let it propagate.

        :raises ValueError: for numbers that are not finite, a total that is not
            positive, or a message that cannot be stored (one with a NUL character
            or a lone surrogate; a longer message than 255 characters is cut).
        """
        fraction = fraction_of(done, total)
        if message is not None:
            message = str(message)[:_PROGRESS_MESSAGE_LENGTH]
            reason = unstorable(message)
            if reason is not None:
                raise ValueError(f"The progress message cannot be stored: {reason}.")
        if self._run is not None:
            self._run.report(fraction, message)

    @property
    def cancelled(self) -> CallableBool:
        """Whether the job was cancelled; check it now and then in long work.

        Read it as a bool: ``if self.cancelled:``. Called, ``self.cancelled()``,
        it gives the same answer (see :class:`~flask_async_request.worker.CallableBool`).
        """
        return _TRUE if self._run is not None and self._run.cancelled() else _FALSE

    def check_cancelled(self) -> None:
        """Raise :class:`~flask_async_request.JobCancelled` if the job was cancelled."""
        if self.cancelled:
            raise JobCancelled(f"Job {self.job_id} was cancelled.")

    def execute(self, *args: Any, **kwargs: Any) -> Reply:
        """Do the work and return the reply as ``(status, body)``.

        ``status`` is an int, an :class:`http.HTTPStatus` or a status name such
        as ``"ok"`` or ``"bad_request"``; ``body`` is a str, or ``None`` for an
        empty body; a third item, the body's media type, is optional. An
        exception marks the job ``failed`` with status 500.

        The body may also be ``bytes``, a file path (``pathlib.Path``), a binary
        file object or an iterable of ``bytes`` chunks, and a fourth item the
        headers the reply keeps (``Content-Disposition``, ``Last-Modified`` ...;
        see :data:`~flask_async_request.payloads.KEPT_HEADERS`); or ``execute``
        returns a Flask response, ``send_file``'s for one. Such a reply, and a
        text one larger than ``ASYNC_REQUEST_RESULT_STORE_THRESHOLD``, goes to
        the result store and is downloaded from the job's result url (see
        :doc:`/files`).
        """
        raise NotImplementedError(f"{type(self).__qualname__} must implement execute()")


def worker_path(worker_class: object) -> str:
    """Return the ``module:QualName`` path of a worker class, checking that it resolves.

    :raises TypeError: ``worker_class`` is not a :class:`Worker` subclass.
    :raises ValueError: the class cannot be imported by that path.
    """
    if not isinstance(worker_class, type) or not issubclass(worker_class, Worker):
        raise TypeError(
            f"worker_class must be a subclass of flask_async_request.Worker, got {worker_class!r}."
        )
    if worker_class is Worker:
        raise TypeError("worker_class must be a subclass of Worker, not Worker itself.")
    path = f"{worker_class.__module__}:{worker_class.__qualname__}"
    if "<locals>" in worker_class.__qualname__:
        raise ValueError(
            f"{path} is defined inside a function, so a worker process cannot import it;"
            " define it at module level."
        )
    try:
        found = resolve_worker(path)
    except WorkerResolutionError as e:
        raise ValueError(f"{path} cannot be imported by its path: {e}") from e
    if found is not worker_class:
        raise ValueError(
            f"{path} resolves to another class than the one given; define each worker once,"
            " at module level."
        )
    return path


def resolve_worker(path: str) -> type[Worker]:
    """Import the :class:`Worker` subclass named by ``module:QualName``.

    Anything else (a function, ``os:system``, a class that is not a ``Worker``)
    is refused, so a row in the database can never name arbitrary code to run.

    :raises WorkerResolutionError: with a message that says why.
    """
    module_name, sep, qualname = path.partition(":")
    if not sep or not module_name or not qualname:
        raise WorkerResolutionError(f"{path!r} is not a worker path of the form 'module:Class'.")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as e:
        raise WorkerResolutionError(f"module {module_name!r} cannot be imported: {e}") from e
    for part in qualname.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise WorkerResolutionError(f"{path!r} does not exist.") from e
    if not isinstance(obj, type) or not issubclass(obj, Worker) or obj is Worker:
        raise WorkerResolutionError(
            f"{path!r} is not a subclass of flask_async_request.Worker; refusing to run it."
        )
    return obj


def status_code_of(status: object) -> int:
    """Turn a worker's ``status`` (int, ``HTTPStatus`` or name) into an HTTP status code.

    :raises InvalidReply: for anything else, or a code outside 100-599.
    """
    if isinstance(status, bool):
        raise InvalidReply(f"status {short_repr(status, _ECHOED)} is a bool, not an HTTP status")
    if isinstance(status, int):
        code = int(status)
    elif isinstance(status, str):
        name = status.strip().lstrip(":").lower()
        if name in _RACK_NAMES:
            code = _RACK_NAMES[name].value
        else:
            try:
                code = HTTPStatus[name.upper()].value
            except KeyError:
                raise InvalidReply(
                    f"status {short_repr(status, _ECHOED)} is not a known HTTP status name"
                ) from None
    else:
        raise InvalidReply(
            f"status {short_repr(status, _ECHOED)} is a {type(status).__name__}; expected an"
            " int, an http.HTTPStatus or a status name such as 'ok'"
        )
    if not 100 <= code <= 599:
        raise InvalidReply(f"status {code} is outside the HTTP range 100-599")
    return code


def content_type_of(content_type: object) -> str | None:
    """A worker's content type, checked; ``None`` for none.

    :raises InvalidReply: for anything but a str the jobs table can store.
    """
    if content_type is None:
        return None
    if not isinstance(content_type, str):
        raise InvalidReply(
            f"returned content type {short_repr(content_type, _ECHOED)}; expected a str"
        )
    reason = unstorable(content_type, _CONTENT_TYPE_LENGTH)
    if reason is not None:
        raise InvalidReply(f"returned a content type that cannot be stored: {reason}")
    return content_type


def normalize_reply(reply: object) -> tuple[int, str, str | None]:
    """Check a worker's return value and turn it into ``(status_code, body, content_type)``.

    A worker returns ``(status, body)``, or ``(status, body, content_type)`` to
    say what the body is.

    :raises InvalidReply: when ``reply`` is not such a tuple of the right types, or
        holds text that no database can store (see :func:`~.values.unstorable`).
    """
    if not isinstance(reply, (tuple, list)) or len(reply) not in (2, 3):
        raise InvalidReply(f"returned {short_repr(reply, _ECHOED)}; expected a (status, body) pair")
    status, body, *rest = reply
    content_type = content_type_of(rest[0] if rest else None)
    code = status_code_of(status)
    if body is None:
        body = ""
    if not isinstance(body, str):
        raise InvalidReply(
            f"returned a body of type {type(body).__name__}; expected a str"
            " (serialise it, for example with json.dumps)"
        )
    reason = unstorable(body)
    if reason is not None:
        raise InvalidReply(f"returned a body that cannot be stored: {reason}")
    return code, body, content_type


def fraction_of(done: float, total: float | None) -> float:
    """``done`` out of ``total`` (or ``done`` alone as a fraction), clamped to 0-1.

    :raises ValueError: for numbers that are not finite, or a total that is not positive.
    """
    for name, value in (("done", done), ("total", total)):
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
        ):
            raise ValueError(f"progress {name} is {value!r}; expected a finite number.")
    if total is not None:
        if total <= 0:
            raise ValueError(f"progress total is {total!r}; expected a positive number.")
        done = done / total
    return min(max(float(done), 0.0), 1.0)


def seconds_of(limit: float | timedelta | None, where: str) -> float | None:
    """A time limit as seconds, or ``None`` for none.

    :raises ValueError: for anything but a positive number of seconds or ``timedelta``.
    """
    if limit is None:
        return None
    seconds = limit.total_seconds() if isinstance(limit, timedelta) else limit
    if (
        isinstance(seconds, bool)
        or not isinstance(seconds, (int, float))
        or not math.isfinite(seconds)
        or seconds <= 0
    ):
        raise ValueError(f"{where} is {limit!r}; expected a positive number of seconds or None.")
    return float(seconds)
