"""The asynchronous request-reply pattern for Flask, on Celery and SQLAlchemy."""

from __future__ import annotations

from .exceptions import (
    AsyncRequestError,
    ConfigurationError,
    EnqueueError,
    InvalidReply,
    InvalidToken,
    JobCancelled,
    JobFinished,
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
    "InvalidReply",
    "InvalidToken",
    "Job",
    "JobCancelled",
    "JobFinished",
    "JobStatus",
    "Worker",
    "WorkerResolutionError",
    "accepted",
]
