"""Gunicorn settings that time the garbage collections of its worker, for bench/sse.py.

``gunicorn -c python:bench.gc_probe``: once the worker has started, each
collection appends a line to the file named by ``BENCH_GC_LOG``: when it began
(``time.monotonic``), the CPU it took (``time.process_time``, seconds) and its
generation (2: a full collection).
"""

from __future__ import annotations

import gc
import os
import time
from typing import Any


def post_worker_init(worker: Any) -> None:
    """Gunicorn's hook: the worker (gevent patched) is ready to serve."""
    path = os.environ.get("BENCH_GC_LOG")
    if not path:
        return
    log = open(path, "a", buffering=1)  # noqa: SIM115  # open for the worker's life
    began = [0.0, 0.0]

    def timed(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            began[:] = time.monotonic(), time.process_time()
        else:
            log.write(f"{began[0]:.4f} {time.process_time() - began[1]:.6f} {info['generation']}\n")

    gc.callbacks.append(timed)
