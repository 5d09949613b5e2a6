"""Embedded mode's worker: a Celery worker in a daemon thread of the web process."""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

from celery import Celery
from celery._state import _set_task_join_will_block


class EmbeddedWorker:
    """A Celery worker in a daemon thread of the web process, for embedded mode.

    It starts on the first enqueue, so CLI commands and tests that enqueue
    nothing start no thread.
    """

    def __init__(self, celery_app: Celery, concurrency: int = 2) -> None:
        self.celery_app = celery_app
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._controller: Any = None
        self._thread: threading.Thread | None = None
        self._pid: int | None = None

    @property
    def running(self) -> bool:
        """Whether the worker thread was started in this process."""
        return self._controller is not None and self._pid == os.getpid()

    def ensure_started(self) -> None:
        """Start the worker thread unless it already runs in this process."""
        if self.running:
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
                pool="threads",
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
            # Starting a pool marks the whole process as a worker, where
            # AsyncResult.get() is refused; the web process is not one.
            _set_task_join_will_block(False)
            self._controller, self._thread, self._pid = controller, thread, os.getpid()

    def stop(self, timeout: float = 10) -> None:
        """Stop the worker thread, letting running jobs finish for up to ``timeout`` seconds."""
        with self._lock:
            if self.running:
                self._controller.stop(in_sighandler=False)
                if self._thread is not None:
                    self._thread.join(timeout)
            self._controller = self._thread = self._pid = None
