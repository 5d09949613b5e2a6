"""Per-app state of the extension, kept in ``app.extensions["async_request"]``."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from flask import Flask, current_app

from .store import JobStore
from .urls import UrlTemplates

if TYPE_CHECKING:
    from celery import Celery
    from flask_sqlalchemy import SQLAlchemy

    from .config import Settings
    from .embedded import EmbeddedWorker
    from .tokens import TokenSigner, TokenVerifier

EXTENSION_KEY = "async_request"


class Outbox(Protocol):
    """Keeps an app's messages instead of its broker (a test's :class:`~.testing.JobRunner`)."""

    def publish(self, job_id: int, countdown: float | None) -> None:
        """Keep the message that runs job ``job_id``."""

    def queue_callback(self, job_id: int) -> None:
        """Keep the message that delivers job ``job_id``'s callback."""


class IdentitySource(Protocol):
    """Holds the app's identity loader (the extension object does)."""

    identity_loader_callback: Callable[[], object] | None


@dataclasses.dataclass
class AsyncRequestState:
    """What one app's :class:`AsyncRequest` knows, kept in ``app.extensions["async_request"]``."""

    db: SQLAlchemy
    settings: Settings
    celery: Celery
    #: The in-process worker of embedded mode; ``None`` when a broker is configured.
    embedded: EmbeddedWorker | None
    #: The extension object, which holds the identity loader.
    extension: IdentitySource
    #: Verifies the status endpoint's tokens, remembering good ones.
    verify_token: TokenVerifier
    #: Signs new jobs' tokens, its key prepared once.
    sign_token: TokenSigner
    #: The external urls of the library's endpoints, built once per origin.
    urls: UrlTemplates
    #: Where messages go instead of the broker while a test runs the jobs itself.
    outbox: Outbox | None = None
    #: The hot paths' statements, made on first use in each process.
    _store: JobStore | None = dataclasses.field(default=None, repr=False)

    def store(self) -> JobStore:
        """The job store of this app in this process."""
        store = self._store
        if store is None or store.pid != os.getpid():
            store = self._store = JobStore.for_app(current_app, self.db.engine)
        return store

    def identity(self) -> str | None:
        """The current identity, as the app's identity loader gives it, or ``None``."""
        loader = self.extension.identity_loader_callback
        if loader is None:
            return None
        identity = loader()
        return None if identity is None else str(identity)


def current_flask_app() -> Flask:
    """The current app itself, not its proxy (for signal senders and threads)."""
    return current_app._get_current_object()  # type: ignore[attr-defined, no-any-return]


def get_state(app: Flask | None = None) -> AsyncRequestState:
    """Return the state of ``app`` (default: the current app).

    :raises RuntimeError: when :meth:`AsyncRequest.init_app` was not called on the app.
    """
    app = current_app if app is None else app
    try:
        return app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]
    except KeyError:
        raise RuntimeError(
            "flask-async-request is not initialised on this app; call"
            " async_request.init_app(app) in the app factory."
        ) from None
