"""Long polls at scale: 1,000 clients waiting on one job in one gunicorn process.

One gunicorn process serves ``bench/far.py`` on PostgreSQL, with each worker
class of ``--servers`` in turn (gthread and gevent). A job is stored and left
pending; ``--waiters`` clients hold ``Prefer: wait=60`` polls on it while
``--pollers`` clients poll it plainly, then the job ends (in this process,
through the lifecycle's own finish). Printed: how many waiters were answered
and how soon after the end, any 5xx, the plain polls' latency without and with
the waiters, and the database connections the web process held while they
waited. Then the floor, on the same server: bare Flask (``bench/bare.py``) with
as many requests held on an event and released at once, with no job, token or
database, and how soon they were answered.

    .venv/bin/python -m bench.longpoll --waiters 1000 --runs 3 --json bench/longpoll.json

``bench/run.py`` shows the figures of ``bench/longpoll.json`` on the results page.
"""

from __future__ import annotations

import argparse
import http.client
import os
import selectors
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from bench.harness import write_runs
from bench.inprocess import DATABASE_NAME, _reset

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The status endpoint of ``bench/far.py``.
PATH = "/async_request/job"


def _get(port: int, path: str, headers: dict[str, str], timeout: float) -> tuple[int, float]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status, time.monotonic()
    except OSError:
        return 0, time.monotonic()
    finally:
        connection.close()


class _Waiters(threading.Thread):
    """Clients holding ``Prefer: wait`` polls, read by one thread with one ``epoll``.

    One thread reads every answer as it arrives, with no more Python per answer
    than a ``recv`` and a ``close``, so the times measure the server, not a
    thousand client threads (or coroutines) taking turns.
    """

    def __init__(self, port: int, count: int, path: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.port, self.count = port, count
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}Connection: close\r\n\r\n"
        ).encode()
        #: (status, monotonic time the whole answer was read) per waiter.
        self.answers: list[tuple[int, float]] = []
        #: Set once every poll is sent.
        self.sent = threading.Event()

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        received: dict[socket.socket, bytes] = {}
        for _ in range(self.count):
            client = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            client.sendall(self.request)
            client.setblocking(False)
            selector.register(client, selectors.EVENT_READ)
            received[client] = b""
        self.sent.set()
        deadline = time.monotonic() + 90
        while received and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=1):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    chunk = ready.recv(65536)
                except OSError:
                    chunk = b""
                    received[ready] = b""
                if chunk:
                    received[ready] += chunk
                    continue
                # The server closed the connection: the whole answer is in.
                at = time.monotonic()
                selector.unregister(ready)
                ready.close()
                answer = received.pop(ready)
                try:
                    status = int(answer.split(b" ", 2)[1])
                except (ValueError, IndexError):
                    status = 0
                self.answers.append((status, at))
        for client in received:
            self.answers.append((0, time.monotonic()))
            client.close()
        selector.close()


def _plain_polls(port: int, headers: dict[str, str], pollers: int, seconds: float) -> list[float]:
    """Latencies (ms) of plain polls by ``pollers`` clients for ``seconds``."""
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    stop = time.monotonic() + seconds

    def loop() -> None:
        while time.monotonic() < stop:
            started = time.monotonic()
            status, ended = _get(port, PATH, headers, 30)
            statuses[status] += 1
            latencies.append((ended - started) * 1000)

    threads = [threading.Thread(target=loop) for _ in range(pollers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    bad = {s: n for s, n in statuses.items() if s != 202}
    if bad:
        print(f"  plain polls that did not answer 202: {bad}")
    return latencies


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _backends() -> int:
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
            " AND application_name = 'far-longpoll-web'",
            (DATABASE_NAME,),
        ).fetchone()
    return int(row[0]) if row else -1


def _server(args: argparse.Namespace, worker_class: str, target: str) -> tuple[Any, int, Path]:
    """One gunicorn process of ``worker_class`` serving ``target``; (process, port, log)."""
    port = _free_port()
    log = Path(tempfile.mkdtemp()) / "gunicorn.log"
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", worker_class, "-w", "1",
         "--threads", str(args.waiters + args.pollers + 50), "--backlog", "4096",
         "--worker-connections", str(args.waiters * 2),
         "-b", f"127.0.0.1:{port}", "--log-level", "warning", target],
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "BENCH_APPLICATION_NAME": "far-longpoll-web"},
    )  # fmt: skip
    return server, port, log


def _started(port: int, path: str, headers: dict[str, str], log: Path) -> None:
    deadline = time.monotonic() + 30
    while _get(port, path, headers, 5)[0] not in (200, 202):
        if time.monotonic() > deadline:
            sys.exit(f"gunicorn did not start:\n{log.read_text()}")
        time.sleep(0.2)


def _spread(delays: list[float]) -> dict[str, float | None]:
    return {
        "p50": statistics.median(delays) if delays else None,
        "p99": _percentile(delays, 0.99) if delays else None,
        "max": max(delays) if delays else None,
    }


def floor(args: argparse.Namespace, worker_class: str) -> dict[str, Any]:
    """Bare Flask on the same server: ``--waiters`` held requests, all released at once.

    What answering that many requests costs one process, with no job, token or
    database: the floor under the long polls' figures.
    """
    server, port, log = _server(args, worker_class, "bench.bare:app")
    try:
        _started(port, "/poll", {}, log)
        waiters = _Waiters(port, args.waiters, "/held", {})
        waiters.start()
        waiters.sent.wait(120)
        time.sleep(2)  # all held by now
        released_at = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        connection.request("POST", "/release")
        connection.getresponse().read()
        connection.close()
        waiters.join(60)
    finally:
        server.terminate()
        server.wait(30)
    delays = [(at - released_at) * 1000 for status, at in waiters.answers if status == 200]
    return {"answered": len(delays), "answer_ms": _spread(delays)}


def measure(args: argparse.Namespace, worker_class: str) -> dict[str, Any]:
    """One run: the waiters' answers and the plain polls beside them."""
    _reset()
    from bench import far
    from flask_async_request import Job, lifecycle
    from flask_async_request.models import JobStatus
    from flask_async_request.outcomes import Outcome
    from flask_async_request.state import get_state

    with far.app.app_context():
        # A run before this one left connections to the database _reset dropped.
        far.db.engine.dispose()
        get_state().store().dispose()
        far.db.create_all()
        job = Job.create_and_enqueue(far.Noop)
        token, job_id = job.token, job.id
    poll = {"X-JOB-AUTHORIZATION": token}
    server, port, log = _server(args, worker_class, "bench.far:app")
    try:
        _started(port, PATH, poll, log)
        alone = _plain_polls(port, poll, args.pollers, args.seconds)
        waiters = _Waiters(port, args.waiters, PATH, {**poll, "Prefer": "wait=60"})
        waiters.start()
        waiters.sent.wait(120)
        time.sleep(2)  # all holding their poll by now
        together = _plain_polls(port, poll, args.pollers, args.seconds)
        connections = _backends()
        early = len(waiters.answers)
        with far.app.app_context():
            store = get_state().store()
            claim = lifecycle.claim(store, job_id, timedelta(minutes=1))
            assert claim is not None
            ended_at = time.monotonic()
            lifecycle.finish(store, job_id, claim.attempt, Outcome(JobStatus.PROCESSED, 200, "{}"))
        waiters.join(60)
        answers = waiters.answers
    finally:
        server.terminate()
        server.wait(30)
    statuses = Counter(status for status, _ in answers)
    delays = [(at - ended_at) * 1000 for status, at in answers if status == 200]
    return {
        "server": worker_class,
        "waiters": args.waiters,
        "answered_before_the_end": early,
        "answers": {str(status): n for status, n in statuses.items()},
        "server_errors": sum(n for s, n in statuses.items() if s >= 500),
        "answer_ms": _spread(delays),
        "plain_alone_ms": {"p50": statistics.median(alone), "p99": _percentile(alone, 0.99)},
        "plain_beside_ms": {
            "p50": statistics.median(together),
            "p99": _percentile(together, 0.99),
        },
        "database_connections": connections,
        "floor": floor(args, worker_class),
    }


def _report(run: dict[str, Any]) -> None:
    answer, alone, beside = run["answer_ms"], run["plain_alone_ms"], run["plain_beside_ms"]
    print(
        f"{run['server']}: waiters: {run['waiters']}, answered before the end:"
        f" {run['answered_before_the_end']}, answers: {run['answers']}"
    )
    if answer["p50"] is not None:
        print(
            f"answer after the job's end (ms): p50 {answer['p50']:.0f},"
            f" p99 {answer['p99']:.0f}, max {answer['max']:.0f}"
        )
    print(f"5xx answers: {run['server_errors']}")
    print(f"plain polls alone: p50 {alone['p50']:.1f} ms, p99 {alone['p99']:.1f} ms")
    print(f"plain polls beside the waiters: p50 {beside['p50']:.1f} ms, p99 {beside['p99']:.1f} ms")
    print(
        f"database connections of the web process while they waited: {run['database_connections']}"
    )
    floor = run["floor"]["answer_ms"]
    if floor["p50"] is not None:
        print(
            f"bare Flask, {run['floor']['answered']} held requests released at once (ms):"
            f" p50 {floor['p50']:.0f}, p99 {floor['p99']:.0f}, max {floor['max']:.0f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=1000)
    parser.add_argument("--pollers", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=5, help="of plain polling, each phase")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--servers",
        default="gthread,gevent",
        help="gunicorn worker classes to run the web process with, each in turn",
    )
    parser.add_argument(
        "--json", type=Path, default=None, help="also write every run's figures to this file"
    )
    args = parser.parse_args()
    runs = []
    for number in range(1, args.runs + 1):
        for server in args.servers.split(","):
            print(f"run {number} of {args.runs}")
            runs.append(measure(args, server))
            _report(runs[-1])
    write_runs(args.json, runs)


if __name__ == "__main__":
    main()
