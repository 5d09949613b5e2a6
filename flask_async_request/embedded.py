"""Embedded mode's worker: a Celery worker in a daemon thread of the web process."""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from .compat import daemon_thread_pool

logger = logging.getLogger("flask_async_request")

#: How long stopping the worker (a reload, Ctrl+C, the process exiting) waits
#: for the jobs it runs; the ones still running are then given up.
STOP_GRACE = 2.0

#: How long the periodic sweeps wait between two tries of a start-up recovery
#: that failed, when no sweep interval is set.
_RECOVERY_RETRY = 30.0


#: Set in the sweeper threads.
_sweeping = threading.local()


class EmbeddedWorker:
    """A Celery worker in a daemon thread of the web process, for embedded mode.

    It starts on the first request the app serves, or the first enqueue, so CLI
    commands start no thread. Once it runs, it recovers what the process before
    it left (see :meth:`keep_jobs`), and when it stops, or the process exits,
    it waits at most :data:`STOP_GRACE` for its running jobs.
    """

    def __init__(self, celery_app: Celery, concurrency: int = 2) -> None:
        self.celery_app = celery_app
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._controller: Any = None
        self._pid: int | None = None
        self._sweep: Callable[[bool], object] | None = None
        self._sweep_interval: float | None = None
        self._give_up: Callable[[], object] | None = None
        self._sweeper: threading.Thread | None = None
        self._stopping = threading.Event()
        self._exit_hook_pid: int | None = None

    @property
    def running(self) -> bool:
        """Whether the worker thread was started in this process."""
        return self._controller is not None and self._pid == os.getpid()

    def keep_jobs(
        self,
        sweep: Callable[[bool], object],
        interval: float | None,
        give_up: Callable[[], object],
    ) -> None:
        """Say how the worker keeps its app's jobs from being lost or stuck.

        :param sweep: called in a thread of its own once the worker runs, with
            ``True`` (recover what the process before left: its in-memory
            messages are gone), then with ``False`` every ``interval`` seconds.
            A recovery that raises is tried again at the next interval.
        :param interval: seconds between sweeps; ``None``: only the recovery.
        :param give_up: called when the worker stops with jobs still running
            after :data:`STOP_GRACE`: it ends their leases, so the next
            recovery or sweep runs them again or fails them by the retry rules.
        """
        self._sweep, self._sweep_interval, self._give_up = sweep, interval, give_up

    def ensure_started(self) -> None:
        """Start the worker thread unless it already runs in this process."""
        if self.running:
            return
        if getattr(_sweeping, "active", False):
            # A sweep that ends after a stop leaves its jobs waiting in the
            # table, for the next start: it never starts a worker itself.
            return
        with self._lock:
            if self.running:
                return
            # Imported here for its cost (~75 ms): only embedded mode needs it.
            from celery.worker import WorkController

            self.celery_app.finalize()
            ready = threading.Event()
            controller = WorkController(
                app=self.celery_app,
                hostname=f"embedded-{os.getpid()}@{socket.gethostname()}",
                pool=daemon_thread_pool(),
                concurrency=self.concurrency,
                without_heartbeat=True,
                without_mingle=True,
                without_gossip=True,
                ready_callback=lambda *a: ready.set(),
            )
            thread = threading.Thread(
                target=controller.start, name="flask-async-request-worker", daemon=True
            )
            thread.start()
            # Publishing before the consumer is up is safe (the message waits in
            # the in-memory queue), but waiting makes start-up errors visible here.
            ready.wait(timeout=10)
            self._controller, self._pid = controller, os.getpid()
            logger.warning(
                "flask-async-request runs jobs in an embedded worker inside this process because"
                ' CELERY has no "broker_url". This is for development only: in production set'
                " a broker (Redis or RabbitMQ) and run `celery worker` processes."
            )
            if self._exit_hook_pid != self._pid:
                # Run before the interpreter's own exit, which would otherwise
                # end the jobs' threads with their rows left processing.
                atexit.register(self.stop)
                self._exit_hook_pid = self._pid
            self._stopping = threading.Event()
            if self._sweep is not None:
                self._sweeper = threading.Thread(
                    target=self._sweeps,
                    args=(self._sweep, self._stopping),
                    name="flask-async-request-sweeper",
                    daemon=True,
                )
                self._sweeper.start()

    def _sweeps(self, sweep: Callable[[bool], object], stopping: threading.Event) -> None:
        """Recover once, then sweep every interval, until ``stopping`` is set."""
        _sweeping.active = True
        recovered = False
        while not stopping.is_set():
            try:
                sweep(not recovered)
                recovered = True
            except Exception:
                logger.exception("The embedded worker's sweep failed; it is tried again.")
            interval = self._sweep_interval
            if interval is None:
                if recovered:
                    return
                interval = _RECOVERY_RETRY
            stopping.wait(interval)

    def stop(self, timeout: float = STOP_GRACE) -> None:
        """Stop the worker thread and its sweeps, letting running jobs finish for ``timeout`` s.

        Jobs still running then are given up (see :meth:`keep_jobs`); their
        threads are daemon threads, which end with the process.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            if self.running:
                self._stopping.set()
                pool = self._controller.pool
                # Its consuming thread ends by itself within Celery's poll
                # timeout (2 s): a daemon thread, not waited for.
                self._controller.stop(in_sighandler=False)
                # Celery's own pool, the fallback, has no wait_idle: its stop
                # waited for its jobs.
                wait_idle = getattr(pool, "wait_idle", None)
                finished = wait_idle is None or wait_idle(timeout)
                if not finished and self._give_up is not None:
                    try:
                        self._give_up()
                    except Exception:
                        logger.exception("Could not give up the jobs the embedded worker runs.")
                if self._sweeper is not None:
                    self._sweeper.join(max(deadline - time.monotonic(), 0.1))
            self._controller = self._sweeper = self._pid = None
