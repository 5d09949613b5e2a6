"""The :class:`AsyncRequest` Flask extension."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, cast

import sqlalchemy as sa
from flask import Flask

from . import (
    downloads,  # noqa: F401  # the result url's routes join the blueprint
    limits,
    web,
)
from .broker import make_celery, start_embedded_worker
from .cli import cli
from .config import load_settings
from .dashboard import DEFAULT_URL_PREFIX, Authorize, init_dashboard
from .models import Job, ResultChunk
from .state import EXTENSION_KEY, AsyncRequestState, get_state
from .tasks import keep_embedded_jobs, register_tasks
from .tokens import TokenSigner, TokenVerifier
from .urls import UrlTemplates
from .views import blueprint

if TYPE_CHECKING:
    from flask_sqlalchemy import SQLAlchemy

C = TypeVar("C", bound=Callable[[], object])


class AsyncRequest:
    """The asynchronous request-reply pattern for a Flask app.

    :param app: the app to initialise now, or ``None`` to call :meth:`init_app` later.
    :type app: ~flask.Flask | None
    :param db: the app's :class:`~flask_sqlalchemy.SQLAlchemy`; by default the one
        registered in ``app.extensions["sqlalchemy"]``.
    :type db: ~flask_sqlalchemy.SQLAlchemy | None
    """

    def __init__(self, app: Flask | None = None, *, db: SQLAlchemy | None = None) -> None:
        self._db = db
        self.identity_loader_callback: Callable[[], object] | None = None
        if app is not None:
            self.init_app(app)

    def identity_loader(self, callback: C) -> C:
        """Register the function that returns the current identity (or ``None``).

        Its value, as a string, is stored as the owner of every job created while
        it returns one, and put in the job's token. Only a request for which the
        loader returns the same identity can then read the job; any other gets
        404, as if the job did not exist. In the Flask-Login style::

            @async_request.identity_loader
            def current_identity():
                return current_user.get_id() if current_user.is_authenticated else None
        """
        self.identity_loader_callback = callback
        return callback

    def init_app(self, app: Flask, *, db: SQLAlchemy | None = None) -> None:
        """Validate the configuration, register the status endpoint and the Celery app.

        :raises RuntimeError: the app is already initialised, or has no SQLAlchemy.
        :raises ConfigurationError: a setting has a wrong type or value.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "flask-async-request is already initialised on this app; call init_app once"
                " per app (remove the second AsyncRequest(app) or init_app(app) call)."
            )
        db = db or self._db or app.extensions.get("sqlalchemy")
        if db is None:
            raise RuntimeError(
                "No Flask-SQLAlchemy extension found on this app; call db.init_app(app) before"
                " async_request.init_app(app), or pass init_app(app, db=db)."
            )
        settings = load_settings(app.config)
        # The jobs and results tables join the app's metadata, so db.create_all()
        # creates them and Flask-Migrate's autogenerate sees them.
        for table in (Job.__table__, ResultChunk.__table__):
            if cast(sa.Table, table).name not in db.metadata.tables:
                cast(sa.Table, table).to_metadata(db.metadata)
        celery_app, embedded = make_celery(app, settings.queue)
        register_tasks(celery_app, app, settings)
        web.listen(db.session)
        # What the model needs of the extension, given to it rather than imported
        # by it (Flask-SQLAlchemy gives its models ``__fsa__`` the same way).
        Job.__async_request__ = self
        app.extensions[EXTENSION_KEY] = AsyncRequestState(
            db=db,
            settings=settings,
            celery=celery_app,
            embedded=embedded,
            extension=self,
            verify_token=TokenVerifier(settings),
            sign_token=TokenSigner(settings),
            urls=UrlTemplates(app.url_default_functions),
        )
        if settings.owner_max_running is not None:
            limits.listen(app)
        if embedded is not None:
            keep_embedded_jobs(embedded, app, settings)
            app.before_request(start_embedded_worker)
        app.register_blueprint(blueprint, url_prefix=settings.url_prefix)
        app.cli.add_command(cli)

    def init_dashboard(
        self,
        app: Flask,
        *,
        authorize: Authorize | None,
        url_prefix: str = DEFAULT_URL_PREFIX,
    ) -> None:
        """Register the jobs dashboard on ``app``, after :meth:`init_app`; it is off otherwise.

        It lists, shows, retries and cancels jobs. It stays closed unless
        ``authorize``, called with no arguments in each dashboard request,
        returns ``True``: with ``authorize=None`` every dashboard url answers
        404, and a request ``authorize`` refuses gets 403. Its forms carry a CSRF
        token kept in Flask's session::

            async_request.init_dashboard(
                app, authorize=lambda: current_user.is_authenticated and current_user.is_admin
            )

        :raises RuntimeError: :meth:`init_app` has not run on the app, or the
            dashboard is registered on it already.
        """
        init_dashboard(app, authorize=authorize, url_prefix=url_prefix)

    def init_metrics(self, app: Flask, *, url_prefix: str = "/async-request") -> None:
        """Count jobs, runs, polls and sweeps, and serve them at ``{url_prefix}/metrics``.

        Needs ``prometheus-client`` (``pip install flask-async-request[metrics]``);
        see :mod:`flask_async_request.metrics` for the figures and for running
        under several processes. Call it where ``init_app`` is called, so worker
        processes count their runs too.

        :raises RuntimeError: ``init_app`` was not called on ``app`` first, or
            prometheus-client is not installed.
        """
        if EXTENSION_KEY not in app.extensions:
            raise RuntimeError("Call async_request.init_app(app) before init_metrics(app).")
        try:
            # Imported here, not at the top: prometheus-client is an optional extra.
            from . import metrics
        except ImportError as e:
            raise RuntimeError(
                "init_metrics needs prometheus-client: pip install flask-async-request[metrics]"
            ) from e
        metrics.listen()
        app.register_blueprint(metrics.make_blueprint(app), url_prefix=url_prefix)

    def create_job(
        self,
        worker_class: type,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        *,
        commit: bool = True,
        idempotency_key: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Validate, store and publish a job (see :meth:`Job.create_and_enqueue`)."""
        return web.create_job(
            worker_class,
            args,
            kwargs,
            commit=commit,
            idempotency_key=idempotency_key,
            callback_url=callback_url,
        )

    def sign_token(self, job: Job) -> str:
        """A token for the stored ``job``, signed with the current app's settings.

        What :attr:`Job.token` asks for a job read from the database; a job
        being created is signed where it is created.
        """
        return web.sign_token(job, get_state().sign_token)
