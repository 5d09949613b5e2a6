"""The asynchronous request-reply pattern for Flask, on Celery and SQLAlchemy.

The server side (the extension, the model, the views) is imported on first use
of its names, so that ``flask_async_request.client`` and the exceptions load
without Flask, Celery or SQLAlchemy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .exceptions import (
    AsyncRequestError,
    BrokerUnavailable,
    ConfigurationError,
    DatabaseUnavailable,
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
    OwnerLimitExceeded,
    ReceiverError,
    StorageError,
    TimeLimitExceeded,
    UnstorableValue,
    WorkerResolutionError,
)

if TYPE_CHECKING:
    from .asyncview import asynchronous
    from .directory import DirectoryStore
    from .downloads import download_url
    from .extension import AsyncRequest
    from .models import Job, JobStatus
    from .s3 import S3Store
    from .storage import ResultStore
    from .views import accepted, openapi_document
    from .worker import Worker

#: Where each name of the server side lives.
_SERVER_SIDE = {
    "AsyncRequest": ".extension",
    "Job": ".models",
    "JobStatus": ".models",
    "Worker": ".worker",
    "accepted": ".views",
    "openapi_document": ".views",
    "asynchronous": ".asyncview",
    "download_url": ".downloads",
    "ResultStore": ".storage",
    "DirectoryStore": ".directory",
    "S3Store": ".s3",
}


def __getattr__(name: str) -> Any:
    module = _SERVER_SIDE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "AsyncRequest",
    "AsyncRequestError",
    "BrokerUnavailable",
    "ConfigurationError",
    "DatabaseUnavailable",
    "DirectoryStore",
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
    "OwnerLimitExceeded",
    "ReceiverError",
    "ResultStore",
    "S3Store",
    "StorageError",
    "TimeLimitExceeded",
    "UnstorableValue",
    "Worker",
    "WorkerResolutionError",
    "accepted",
    "asynchronous",
    "download_url",
    "openapi_document",
]
