"""Errors raised by flask-async-request."""

from __future__ import annotations

from typing import Any


class AsyncRequestError(Exception):
    """Base class of every error this library raises."""


class ConfigurationError(AsyncRequestError, ValueError):
    """An ``ASYNC_REQUEST_*`` or ``CELERY`` setting has a wrong type or value."""


class InvalidToken(AsyncRequestError):
    """A job token is missing, malformed, tampered with or expired."""


class EnqueueError(AsyncRequestError):
    """The job's row was committed but its message could not be published.

    The row stays ``waiting`` with its id in :attr:`job_id`, so the job can be
    published again once the broker is reachable: the sweeper does. Raised by
    ``Job.create_and_enqueue``, it also holds the stored job in :attr:`job`, so
    a view answers 202 for it rather than a 5xx that would have the client
    submit it again::

        try:
            job = Job.create_and_enqueue(Report, month)
        except EnqueueError as e:
            job = e.job
        return accepted(job)
    """

    def __init__(self, message: str, job_id: int) -> None:
        super().__init__(message)
        #: The id of the stored job whose message was not published.
        self.job_id = job_id
        #: The stored :class:`~flask_async_request.Job` when a new job's publish
        #: failed (``None`` for a retry's or the sweeper's publish).
        self.job: Any = None


class DatabaseUnavailable(AsyncRequestError):
    """The jobs database could not be reached: a connection lost, refused or reset.

    ``Job.create_and_enqueue`` raises it when the job's row could not be
    stored; the app answers 503 with ``Retry-After`` for it, in any view that
    lets it through, as the status endpoint does while the database is out of
    reach. (Only a connection cut in the middle of the INSERT leaves it unknown
    whether the row was stored: an ``Idempotency-Key`` makes asking again safe
    even then.) A worker's claim or reply that still cannot reach the database
    after its retries raises it too. The driver's error is its ``__cause__``,
    and the log's: the message is the library's own sentence.
    """


class BrokerUnavailable(AsyncRequestError):
    """The broker could not be reached to ask the worker processes (Celery's inspect).

    The operator's reads raise it (:func:`~flask_async_request.maintenance.consumers`,
    the ``stats`` command); the dashboard says so on its page. A connection the
    broker closed meanwhile (a restart) is tried once again first. The error of
    kombu or the driver is its ``__cause__``.
    """


class WorkerResolutionError(AsyncRequestError):
    """A stored worker path does not name an importable :class:`Worker` subclass."""


class InvalidReply(AsyncRequestError):
    """A worker's ``execute`` returned something other than ``(status, body)``."""


class JobCancelled(AsyncRequestError):
    """Raised inside a worker whose job was cancelled, to stop its work early.

    :meth:`Worker.progress` and :meth:`Worker.check_cancelled` raise it; the
    library catches it and leaves the job ``cancelled``.
    """


class JobNotFound(AsyncRequestError, LookupError):
    """There is no job with this id (it never existed, or it was purged)."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"There is no job {job_id}.")
        self.job_id = job_id


class InvalidJobRow(AsyncRequestError):
    """A job's row holds what the library never writes (a row edited by hand)."""

    def __init__(self, message: str, job_id: int) -> None:
        super().__init__(message)
        self.job_id = job_id


class JobStateError(AsyncRequestError):
    """The job is in a status that does not allow what was asked of it."""

    def __init__(self, message: str, job_id: int, status: str) -> None:
        super().__init__(message)
        self.job_id = job_id
        #: The job's status when the change was refused (a ``JobStatus`` value).
        self.status = status


class TimeLimitExceeded(AsyncRequestError):
    """Raised inside a worker whose job ran past its time limit, to stop its work.

    The job has already failed with a time-limit error when this is raised; a
    worker may catch it to clean up, and should then let it propagate.
    """

    def __init__(self, message: str = "The job ran past its time limit.") -> None:
        super().__init__(message)


class JobFinished(JobStateError):
    """The job has finished already (processed, failed or cancelled), so it cannot be cancelled."""


class JobNotFailed(JobStateError):
    """Only a failed job can be run again, and this one has not failed."""


class InvalidRequest(AsyncRequestError, ValueError):
    """Something a client sent cannot make a job; the app answers 400 for it.

    Raised by :meth:`Job.create_and_enqueue` for a bad ``idempotency_key`` or
    ``callback_url``, so a view that passes a client's header or field straight
    through needs no check of its own: the status endpoint's app answers 400
    with the JSON error envelope.
    """


class InvalidIdempotencyKey(InvalidRequest):
    """An ``Idempotency-Key`` that is empty, too long or not a str."""


class InvalidCallbackUrl(InvalidRequest):
    """A ``callback_url`` that is not an absolute http(s) url of 2,048 chars at most."""


class UnstorableValue(InvalidRequest):
    """A new job holds what the jobs table cannot store; no row is left behind.

    A lone surrogate in an argument (a str that is not valid Unicode, such as
    one parsed from a client's JSON), or an owner with a NUL character or more
    than 255 characters, refused by :meth:`Job.create_and_enqueue` before
    anything is written; or a value the database refused all the same (its own
    error is logged, not repeated). As an :class:`InvalidRequest`, the app
    answers 400 for it.
    """


class StorageError(AsyncRequestError):
    """The jobs table refused a write made for a running job, for a reason other than a
    lost connection; the message is the library's, the database's error is in the log."""

    def __init__(self, message: str, job_id: int) -> None:
        super().__init__(message)
        self.job_id = job_id


class ReceiverError(AsyncRequestError):
    """A receiver of :data:`~.signals.job_progress` raised while the job ran; the
    message is the library's, the receiver's error is in the log. The job ends
    failed, and is not retried."""

    def __init__(self, message: str, job_id: int) -> None:
        super().__init__(message)
        self.job_id = job_id


class IdempotencyConflict(AsyncRequestError, ValueError):
    """An idempotency key was used before for a request with other arguments."""

    def __init__(self, message: str, job_id: int) -> None:
        super().__init__(message)
        self.job_id = job_id


class OwnerLimitExceeded(AsyncRequestError):
    """A new job was refused: its owner is at one of its admission limits.

    Raised by ``Job.create_and_enqueue`` (and so by ``@asynchronous``) before
    anything is stored or sent; any view of the app answers it with ``429 Too
    Many Requests``, ``Retry-After`` and the JSON envelope.
    """

    def __init__(self, message: str, *, limit: str, retry_after: int) -> None:
        super().__init__(message)
        #: Which limit: ``"in_flight"`` (jobs waiting or processing) or ``"rate"``.
        self.limit = limit
        #: Whole seconds after which asking again may be admitted (at least 1).
        self.retry_after = retry_after
