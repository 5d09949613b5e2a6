"""The asynchronous request-reply pattern for Flask, on Celery and SQLAlchemy."""

from __future__ import annotations

from .asyncview import asynchronous
from .exceptions import (
    AsyncRequestError,
    ConfigurationError,
    EnqueueError,
    IdempotencyConflict,
    InvalidCallbackUrl,
    InvalidIdempotencyKey,
    InvalidJobRow,
    InvalidReply,
    InvalidRequest,
    InvalidToken,
    JobCancelled,
    JobFinished,
    JobNotFailed,
    JobNotFound,
    JobStateError,
    TimeLimitExceeded,
    WorkerResolutionError,
)
from .extension import AsyncRequest
from .models import Job, JobStatus
from .views import accepted
from .worker import Worker

__all__ = [
    "AsyncRequest",
    "AsyncRequestError",
    "ConfigurationError",
    "EnqueueError",
    "IdempotencyConflict",
    "InvalidCallbackUrl",
    "InvalidIdempotencyKey",
    "InvalidJobRow",
    "InvalidReply",
    "InvalidRequest",
    "InvalidToken",
    "Job",
    "JobCancelled",
    "JobFinished",
    "JobNotFailed",
    "JobNotFound",
    "JobStateError",
    "JobStatus",
    "TimeLimitExceeded",
    "Worker",
    "WorkerResolutionError",
    "accepted",
    "asynchronous",
]
