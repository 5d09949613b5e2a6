"""Event streams beside polling: the requests and queries a second each costs the server.

The same ``--clients`` follow ``--jobs`` pending jobs on one gunicorn process
(gevent) serving ``bench/far.py`` on PostgreSQL, first polling each its job's url
once a second (keep-alive connections, spread over the second, read by one client
thread with one ``epoll``), then each holding an event stream of it, while every
job reports progress once a second (as in ``bench/sse.py``). For each, over
``--seconds``: the requests the server answered a second (counted by the
client) and the transactions a second of its database (``pg_stat_database``'s
``xact_commit`` and ``xact_rollback``, less the progress writes of this
process, which both pay alike). Every statement of the web process is a
transaction of its own, so these are its queries. The ratios are polling's
over the streams'.

    .venv/bin/python -m bench.sse_polls --clients 1000 --jobs 10 --json bench/sse_polls.json
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import statistics
import subprocess
import textwrap
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import write_runs
from bench.inprocess import DATABASE_NAME
from bench.longpoll import PATH, _get
from bench.sse import _open, _server, claimed_jobs


@dataclass
class _Client:
    """One polling connection: its request, what it read so far, its turn in each second."""

    connection: socket.socket
    request: bytes
    offset: float
    buffer: bytes = b""
    awaiting: bool = False


class _Pollers(threading.Thread):
    """``clients`` keep-alive connections, each asking its path once a second, spread out."""

    def __init__(self, port: int, paths: list[str], seconds: float) -> None:
        super().__init__(daemon=True)
        self.port, self.paths, self.seconds = port, paths, seconds
        self.statuses: Counter[int] = Counter()
        #: When the polls were sent: from the first to the last second.
        self.started = self.ended = 0.0

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        clients = []
        for index, path in enumerate(self.paths):
            connection = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            connection.setblocking(False)
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            client = _Client(connection, request, index / len(self.paths))
            selector.register(connection, selectors.EVENT_READ, client)
            clients.append(client)
        self.started = time.monotonic()
        stop = self.started + self.seconds
        second = sent = 0
        while True:
            now = time.monotonic()
            if now >= stop and not any(client.awaiting for client in clients):
                break
            # Every connection whose turn in this second has come asks once.
            while sent < len(clients) and now < stop:
                client = clients[sent]
                if self.started + second + client.offset > now:
                    break
                if not client.awaiting:
                    client.connection.sendall(client.request)
                    client.awaiting = True
                sent += 1
            if sent == len(clients) and now < stop:
                second, sent = second + 1, 0
            for key, _ in selector.select(timeout=0.005):
                self._read(selector, key.data)
            if now >= stop and not self.ended:
                self.ended = now
        for client in clients:
            client.connection.close()
        selector.close()

    def _read(self, selector: selectors.BaseSelector, client: _Client) -> None:
        """Read what came on ``client``'s connection; count an answer once it is whole."""
        try:
            chunk = client.connection.recv(65536)
        except OSError:
            chunk = b""
        if not chunk:
            selector.unregister(client.connection)
            client.awaiting = False
            self.statuses[0] += 1
            return
        client.buffer += chunk
        head, found, body = client.buffer.partition(b"\r\n\r\n")
        if not found:
            return
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if len(body) < length:
            return
        self.statuses[int(head.split(b" ", 2)[1])] += 1
        client.buffer, client.awaiting = body[length:], False


def _transactions() -> int:
    """The database's transactions so far, as its statistics tell (committed and rolled back)."""
    import psycopg

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        row = c.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s",
            (DATABASE_NAME,),
        ).fetchone()
    return int(row[0]) if row else 0


#: Seconds of quiet before the statistics are read: a backend publishes its
#: counts when it goes idle, at the latest 10 s after its last statement.
SETTLE = 11.0


class _Progress(threading.Thread):
    """Each job reports progress once a second, from this process, as a worker would."""

    def __init__(self, jobs: list[tuple[int, int]], seconds: float) -> None:
        super().__init__(daemon=True)
        self.jobs, self.seconds, self.writes = jobs, seconds, 0

    def run(self) -> None:
        from bench import far
        from flask_async_request import lifecycle
        from flask_async_request.state import get_state

        with far.app.app_context():
            store = get_state().store()
            for second in range(int(self.seconds)):
                started = time.monotonic()
                for job_id, attempt in self.jobs:
                    lifecycle.set_progress(store, job_id, attempt, round(second / 100, 4), None)
                    self.writes += 1
                time.sleep(max(0.0, 1 - (time.monotonic() - started)))


def _window(seconds: float, jobs: list[tuple[int, int]], load: threading.Thread | None) -> Any:
    """The database's transactions a second while ``load`` runs and the jobs report progress.

    Less the progress writes, which polling and streaming pay alike. The counts
    are read after :data:`SETTLE` seconds of quiet before and after.
    """
    time.sleep(SETTLE)
    before = _transactions()
    progress = _Progress(jobs, seconds)
    started = time.monotonic()
    progress.start()
    if load is not None:
        load.start()
        load.join(seconds + 60)
    progress.join(seconds + 60)
    elapsed = time.monotonic() - started
    time.sleep(SETTLE)
    transactions = _transactions() - before
    return {
        "seconds": elapsed,
        "transactions": transactions,
        "progress_writes": progress.writes,
        "queries_per_s": max(0, transactions - progress.writes) / elapsed,
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One run: the clients polling, then the same clients streaming."""
    tokens, attempts = claimed_jobs(args.jobs)
    args.streams = args.clients  # the server's worker connections
    server, port, _ = _server(args, "bench.far:app")
    jobs = [(job_id, attempts[job_id]) for job_id, _ in tokens]
    try:
        per_job = args.clients // args.jobs
        paths = [f"{PATH}/{token}" for _, token in tokens for _ in range(per_job)]
        for path in paths[:: max(1, per_job)]:
            _get(port, path, {}, 30)  # the process's first requests set it up; not counted
        pollers = _Pollers(port, paths, args.seconds)
        polling = _window(args.seconds, jobs, pollers)
        polled = sum(n for status, n in pollers.statuses.items() if 200 <= status < 300)
        polling["requests_per_s"] = polled / (pollers.ended - pollers.started)
        polling["answers"] = {str(status): n for status, n in pollers.statuses.items()}
        streams = _open(port, [(0, path) for path in paths], {"Accept": "text/event-stream"})
        streaming = _window(args.seconds, jobs, None)
        streams.stop.set()
        streams.join(30)
        # Requests while the streams are open: none; each reconnects once per
        # ASYNC_REQUEST_STREAM_MAX_DURATION (5 minutes by default).
        streaming["requests_per_s"] = 0.0
        streaming["requests_per_s_with_reconnects"] = len(paths) / args.max_duration
        streaming["answers"] = {str(status): n for status, n in streams.statuses.items()}
        streaming["progress_events"] = sum(1 for e in streams.events if e[1] == "progress")
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(30)
    return {
        "clients": len(paths),
        "jobs": args.jobs,
        "polling": polling,
        "streaming": streaming,
        "requests_ratio": polling["requests_per_s"] / streaming["requests_per_s_with_reconnects"],
        "queries_ratio": polling["queries_per_s"] / max(streaming["queries_per_s"], 1e-9),
    }


def section(path: Path) -> str:
    """The paragraph of the last runs, as ``--json`` wrote them, for bench/README.rst."""
    if not path.exists():
        return ""
    found = json.loads(path.read_text())
    runs = found["runs"]

    def median(pick: Any) -> float:
        return float(statistics.median(pick(run) for run in runs))

    clients, jobs = runs[0]["clients"], runs[0]["jobs"]
    polled = median(lambda r: r["polling"]["requests_per_s"])
    polling_queries = median(lambda r: r["polling"]["queries_per_s"])
    per_poll = median(lambda r: r["polling"]["queries_per_s"] / r["polling"]["requests_per_s"])
    streaming_queries = median(lambda r: r["streaming"]["queries_per_s"])
    reconnects = median(lambda r: r["streaming"]["requests_per_s_with_reconnects"])
    per_change = streaming_queries / jobs
    big = 10_000
    text = (
        f"Measured beside polling: ``python -m bench.sse_polls --clients {clients} --jobs {jobs}"
        f" --runs {len(runs)} --json bench/sse_polls.json``, {found['when']}, medians of"
        f" {len(runs)} runs. The same {clients:,} clients of {jobs} jobs, each job reporting"
        " progress once a second, first poll once a second (keep-alive, spread over the"
        f" second), then hold event streams, {runs[0]['polling']['seconds']:.0f} s each;"
        " requests are counted by the client, queries as the database's transactions"
        " (``pg_stat_database``, less the progress writes, which both pay). Polling, the"
        f" process answered {polled:,.0f} requests a second, all it could: of the"
        f" {clients:,} a second asked, a client whose answer had not come by its next turn"
        f" skipped it; each poll cost {per_poll:.2f} queries, {polling_queries:,.0f} a second."
        f" Streaming: no request while the streams are open (one a stream every"
        f" ``ASYNC_REQUEST_STREAM_MAX_DURATION``, {reconnects:.1f} a second at its default 5"
        f" minutes) and {streaming_queries:.1f} queries a second, {per_change:.2f} per change"
        " of a job (the changes announced together are read in one query). Here streams"
        f" spare {polled / reconnects:,.0f} times the requests and"
        f" {polling_queries / streaming_queries:,.0f} times the queries the process could"
        f" serve. {big:,} clients polling every second are more than this 2-core machine"
        f" serves; scaled by the costs measured (a poll: one request, {per_poll:.2f} queries;"
        " a stream: a request each 5 minutes, and its job's change one query at most,"
        f" shared by every stream of that job), {big:,} pollers of 100 jobs ask"
        f" {big:,} requests and {big * per_poll:,.0f} queries a second, {big:,} streams"
        f" {big / 300:.0f} requests and at most 100 queries a second: {300:,} times fewer"
        f" requests and {big * per_poll / 100:,.0f} times fewer queries (or"
        f" {big * per_poll / (100 * per_change):,.0f} times at the"
        f" {per_change:.2f} queries per change measured here)."
    )
    return textwrap.fill(text, width=92, break_on_hyphens=False, break_long_words=False)


def _report(run: dict[str, Any]) -> None:
    polling, streaming = run["polling"], run["streaming"]
    print(
        f"{run['clients']} clients of {run['jobs']} jobs. polling once a second:"
        f" {polling['requests_per_s']:.0f} requests/s ({polling['answers']}),"
        f" {polling['queries_per_s']:.1f} queries/s"
    )
    print(
        f"streaming: {streaming['requests_per_s_with_reconnects']:.2f} requests/s with"
        f" reconnects ({streaming['answers']}), {streaming['queries_per_s']:.1f} queries/s,"
        f" {streaming['progress_events']} progress events"
    )
    print(f"ratios: requests {run['requests_ratio']:.0f}x, queries {run['queries_ratio']:.0f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument(
        "--max-duration", type=float, default=300.0, help="ASYNC_REQUEST_STREAM_MAX_DURATION"
    )
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    runs = []
    for number in range(1, args.runs + 1):
        print(f"run {number} of {args.runs}")
        runs.append(measure(args))
        _report(runs[-1])
    write_runs(args.json, runs)


if __name__ == "__main__":
    main()
