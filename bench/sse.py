"""Event streams at scale: many open streams of a few jobs on one gevent process.

One gunicorn process (gevent) serves ``bench/far.py`` on PostgreSQL. ``--jobs``
jobs are stored and claimed; ``--streams`` clients (as many per job) follow
them with ``Accept: text/event-stream``, read by one client thread with one
``epoll``. Then, once a second for ``--seconds`` seconds, each job reports
progress (``lifecycle.set_progress``, from this process, as a worker would);
then every job ends. Before the progress, ``--pollers`` clients poll a job
plainly beside the open streams, as they did before the streams opened. Printed:
how soon after its write each progress value and each end reached the
streams (p50, p99), any 5xx, the web process's database connections and
resident memory per 1,000 streams, and the plain polls' p99 alone and beside
the streams. Then the floor, on the same server: bare Flask
(``bench/bare.py``) with as many streams held on a condition, fed the same
events from memory, with no job, token or database.

    .venv/bin/python -m bench.sse --streams 1000 --jobs 10 --runs 3 --json bench/sse.json
"""

from __future__ import annotations

import argparse
import http.client
import json
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

from bench.harness import write_runs
from bench.inprocess import _reset
from bench.longpoll import PATH, _free_port, _get, _percentile, _plain_polls

ROOT = Path(__file__).resolve().parents[1]
APPLICATION_NAME = "far-sse-web"


class _Streams(threading.Thread):
    """Clients following event streams, read by one thread with one ``epoll``.

    Each stream's events are parsed as they arrive; what is kept is, per
    event, its job, name, progress value and the time it was read.
    """

    def __init__(self, port: int, paths: list[tuple[int, str]], headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.port, self.paths = port, paths
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.template = "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n" + lines + "\r\n"
        #: (job, event, progress value or None, monotonic time read).
        self.events: list[tuple[int, str, str | None, float]] = []
        self.statuses: Counter[int] = Counter()
        self.sent = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        state: dict[socket.socket, list[Any]] = {}
        for job, path in self.paths:
            client = socket.create_connection(("127.0.0.1", self.port), timeout=30)
            client.sendall(self.template.format(path=path).encode())
            client.setblocking(False)
            selector.register(client, selectors.EVENT_READ)
            # job, buffer, headers read
            state[client] = [job, b"", False]
        self.sent.set()
        while state and not self.stop.is_set():
            for key, _ in selector.select(timeout=0.5):
                ready = key.fileobj
                assert isinstance(ready, socket.socket)
                try:
                    chunk = ready.recv(65536)
                except OSError:
                    chunk = b""
                at = time.monotonic()
                entry = state[ready]
                if not chunk:
                    selector.unregister(ready)
                    ready.close()
                    del state[ready]
                    continue
                entry[1] += chunk
                if not entry[2]:
                    head, found, rest = entry[1].partition(b"\r\n\r\n")
                    if not found:
                        continue
                    try:
                        self.statuses[int(head.split(b" ", 2)[1])] += 1
                    except (ValueError, IndexError):
                        self.statuses[0] += 1
                    entry[1], entry[2] = rest, True
                *blocks, entry[1] = entry[1].split(b"\n\n")
                for block in blocks:
                    name, value = "", None
                    for line in block.decode().split("\n"):
                        if line.startswith("event: "):
                            name = line[7:]
                        elif line.startswith("data: ") and name == "progress":
                            value = str(json.loads(line[6:])["progress"])
                    if name:
                        self.events.append((entry[0], name, value, at))
        for client in state:
            client.close()
        selector.close()


def _rss_of_children(parent: int) -> int:
    """The resident memory, in kB, of ``parent``'s children (gunicorn's worker)."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) != parent:
                continue
            for line in (entry / "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return total


def _worker(parent: int) -> int:
    """The pid of ``parent``'s child (gunicorn's one worker); 0 if none is found."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == parent:
                    return int(entry.name)
            except (OSError, IndexError, ValueError):
                continue
    return 0


def _cpu_seconds(pid: int) -> float:
    """The CPU time (user and system) process ``pid`` has used so far, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # utime and stime: the 14th and 15th fields, the 12th and 13th after the name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Progress:
    """The web process's CPU during the progress seconds, and the events delivered meanwhile.

    Of that CPU, the garbage collections begun meanwhile (``bench.gc_probe``):
    all of them, and the full ones (their count and the longest). With
    ``--py-spy``, py-spy samples the process over those seconds (which slows
    it: a profiled run's figures are not comparable).
    """

    def __init__(self, args: argparse.Namespace, server: Any, log: Path, name: str) -> None:
        self.pid, self.profile = _worker(server.pid), None
        self.collections = log.with_name("gc.log")
        self.started_cpu, self.started = _cpu_seconds(self.pid), time.monotonic()
        self.cpu, self.ended = 0.0, self.started
        if args.py_spy is not None and self.pid:
            self.profile = subprocess.Popen(
                [str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(self.pid),
                 "--rate", "100", "--duration", str(args.seconds), "-f", "raw",
                 "-o", str(args.py_spy.with_name(f"{args.py_spy.name}.{name}.txt"))],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip

    def end(self) -> None:
        """The progress seconds are over (before the ends are written)."""
        self.cpu = _cpu_seconds(self.pid) - self.started_cpu
        self.ended = time.monotonic()
        if self.profile is not None:
            self.profile.wait(60)

    def figures(self, streams: _Streams) -> dict[str, Any]:
        delivered = sum(
            1
            for _, event, _, at in streams.events
            if event == "progress" and self.started <= at <= self.ended
        )
        collected, full = 0.0, []
        lines = self.collections.read_text().split("\n") if self.collections.exists() else []
        for line in filter(None, lines):
            at, cpu, generation = line.split()
            if self.started <= float(at) <= self.ended:
                collected += float(cpu)
                if generation == "2":
                    full.append(float(cpu))
        return {
            "cpu_s": round(self.cpu, 3),
            "events": delivered,
            "cpu_us_per_event": round(self.cpu * 1e6 / delivered, 1) if delivered else None,
            "gc_cpu_s": round(collected, 3),
            "full_collections": len(full),
            "longest_full_collection_s": round(max(full), 3) if full else None,
        }


def _server(args: argparse.Namespace, target: str) -> tuple[Any, int, Path]:
    port = _free_port()
    log = Path(tempfile.mkdtemp()) / "gunicorn.log"
    collections = log.with_name("gc.log")
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1", "--backlog", "4096",
         "--worker-connections", str(args.streams * 2 + 100),
         "-b", f"127.0.0.1:{port}", "--log-level", "warning", "-c", "python:bench.gc_probe",
         target],
        cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONPATH": str(ROOT), "BENCH_APPLICATION_NAME": APPLICATION_NAME,
             "BENCH_GC_LOG": str(collections)},
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                sys.exit(f"gunicorn did not start:\n{log.read_text()}")
            time.sleep(0.2)
    return server, port, log


def _spread(delays: list[float]) -> dict[str, float | None]:
    return {
        "p50": statistics.median(delays) if delays else None,
        "p99": _percentile(delays, 0.99) if delays else None,
        "count": len(delays),
    }


def _delays(streams: _Streams, written: dict[tuple[int, str], float], name: str) -> list[float]:
    return [
        (at - written[(job, value or "end")]) * 1000
        for job, event, value, at in streams.events
        if event == name and (job, value or "end") in written
    ]


def _open(port: int, paths: list[tuple[int, str]], headers: dict[str, str]) -> _Streams:
    streams = _Streams(port, paths, headers)
    streams.start()
    streams.sent.wait(300)
    # Every stream has its first events before anything is reported.
    deadline = time.monotonic() + 120
    while sum(1 for event in streams.events if event[1] == "status") < len(paths):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return streams


def floor(args: argparse.Namespace) -> dict[str, Any]:
    """Bare Flask on the same server: as many streams, fed the same events from memory."""
    server, port, log = _server(args, "bench.bare:app")
    written: dict[tuple[int, str], float] = {}
    try:
        per_job = args.streams // args.jobs
        paths = [(job, f"/events/{job}") for job in range(args.jobs) for _ in range(per_job)]
        streams = _open(port, paths, {})
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        progress = _Progress(args, server, log, "floor")
        for second in range(1, args.seconds + 1):
            started = time.monotonic()
            for job in range(args.jobs):
                value = str(round(second / (args.seconds + 1), 4))
                written[(job, value)] = time.monotonic()
                connection.request("POST", f"/publish/{job}/{value}")
                connection.getresponse().read()
            time.sleep(max(0.0, 1 - (time.monotonic() - started)))
        progress.end()
        for job in range(args.jobs):
            written[(job, "end")] = time.monotonic()
            connection.request("POST", f"/publish/{job}/end")
            connection.getresponse().read()
        connection.close()
        streams.join(60)
    finally:
        server.terminate()
        server.wait(30)
    return {
        "progress_ms": _spread(_delays(streams, written, "progress")),
        "end_ms": _spread(_delays(streams, written, "end")),
        "progress_cpu": progress.figures(streams),
    }


def claimed_jobs(count: int) -> tuple[list[tuple[int, str]], dict[int, int]]:
    """A fresh database with ``count`` jobs, claimed: their ids and tokens, and their attempts."""
    _reset()
    from bench import far
    from flask_async_request import Job, lifecycle
    from flask_async_request.state import get_state

    with far.app.app_context():
        far.db.engine.dispose()
        get_state().store().dispose()
        far.db.create_all()
        jobs = [Job.create_and_enqueue(far.Noop) for _ in range(count)]
        tokens = [(job.id, job.token) for job in jobs]
        store = get_state().store()
        attempts = {}
        for job_id, _ in tokens:
            claim = lifecycle.claim(store, job_id, timedelta(hours=1))
            assert claim is not None
            attempts[job_id] = claim.attempt
    return tokens, attempts


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """One run: the streams' events, the plain polls beside them, the floor."""
    from bench import far
    from flask_async_request import lifecycle
    from flask_async_request.models import JobStatus
    from flask_async_request.outcomes import Outcome
    from flask_async_request.state import get_state

    tokens, attempts = claimed_jobs(args.jobs)
    store = get_state(far.app).store()
    server, port, log = _server(args, "bench.far:app")
    written: dict[tuple[int, str], float] = {}
    try:
        poll = {"X-JOB-AUTHORIZATION": tokens[0][1]}
        _get(port, PATH, poll, 10)
        alone = _plain_polls(port, poll, args.pollers, 3)
        per_job = args.streams // args.jobs
        paths = [(job_id, f"{PATH}/{token}") for job_id, token in tokens for _ in range(per_job)]
        opened = time.monotonic()
        streams = _open(port, paths, {"Accept": "text/event-stream"})
        opening = time.monotonic() - opened
        rss = _rss_of_children(server.pid)
        connections = _backends_named()
        # Beside the open streams, before the progress: the load generator's own
        # threads are not running while the events' times are taken.
        beside = _plain_polls(port, poll, args.pollers, 3)
        with far.app.app_context():
            progress = _Progress(args, server, log, "far")
            for second in range(1, args.seconds + 1):
                started = time.monotonic()
                for job_id, _ in tokens:
                    value = round(second / (args.seconds + 1), 4)
                    written[(job_id, str(value))] = time.monotonic()
                    lifecycle.set_progress(store, job_id, attempts[job_id], value, None)
                time.sleep(max(0.0, 1 - (time.monotonic() - started)))
            progress.end()
            for job_id, _ in tokens:
                written[(job_id, "end")] = time.monotonic()
                outcome = Outcome(JobStatus.PROCESSED, 200, "{}")
                lifecycle.finish(store, job_id, attempts[job_id], outcome)
        streams.join(60)
    finally:
        server.terminate()
        server.wait(30)
    statuses = streams.statuses
    return {
        "streams": len(paths),
        "jobs": args.jobs,
        "opening_s": opening,
        "answers": {str(status): n for status, n in statuses.items()},
        "server_errors": sum(n for s, n in statuses.items() if s >= 500),
        "progress_ms": _spread(_delays(streams, written, "progress")),
        "progress_expected": len(paths) * args.seconds,
        "end_ms": _spread(_delays(streams, written, "end")),
        "progress_cpu": progress.figures(streams),
        "plain_alone_p99_ms": _percentile(alone, 0.99),
        "plain_beside_p99_ms": _percentile(beside, 0.99) if beside else None,
        "database_connections": connections,
        "rss_kb_per_1000_streams": rss * 1000 // max(1, len(paths)),
        "rss_kb": rss,
        "floor": floor(args),
    }


def _backends_named() -> int:
    """The web process's connections (``bench.longpoll._backends`` counts its own name)."""
    import psycopg

    from bench.inprocess import DATABASE_NAME

    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        row = c.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND application_name = %s",
            (DATABASE_NAME, APPLICATION_NAME),
        ).fetchone()
    return int(row[0]) if row else -1


def _report(run: dict[str, Any]) -> None:
    progress, end = run["progress_ms"], run["end_ms"]
    floor_progress, floor_end = run["floor"]["progress_ms"], run["floor"]["end_ms"]
    print(
        f"streams: {run['streams']} of {run['jobs']} jobs, opened in {run['opening_s']:.1f} s,"
        f" answers {run['answers']}, 5xx {run['server_errors']}"
    )
    print(
        f"progress events: {progress['count']} of {run['progress_expected']},"
        f" p50 {progress['p50']} ms, p99 {progress['p99']} ms"
        f" (floor p50 {floor_progress['p50']}, p99 {floor_progress['p99']})"
    )
    print(
        f"end events: {end['count']}, p50 {end['p50']} ms, p99 {end['p99']} ms"
        f" (floor p50 {floor_end['p50']}, p99 {floor_end['p99']})"
    )
    cpu, floor_cpu = run["progress_cpu"], run["floor"]["progress_cpu"]
    for name, figures in (("ours", cpu), ("floor", floor_cpu)):
        print(
            f"web process CPU over the progress seconds, {name}: {figures['cpu_s']} s for"
            f" {figures['events']} progress events, {figures['cpu_us_per_event']} us per event;"
            f" garbage collection {figures['gc_cpu_s']} s, {figures['full_collections']} full"
            f" (longest {figures['longest_full_collection_s']} s)"
        )
    print(
        f"plain polls p99: alone {run['plain_alone_p99_ms']:.1f} ms,"
        f" beside {run['plain_beside_p99_ms']} ms"
    )
    print(
        f"database connections: {run['database_connections']},"
        f" RSS {run['rss_kb'] / 1024:.0f} MB ({run['rss_kb_per_1000_streams'] / 1024:.1f} MB"
        " per 1,000 streams)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--jobs", type=int, default=10)
    parser.add_argument("--pollers", type=int, default=10)
    parser.add_argument("--seconds", type=int, default=10, help="of progress, once a second")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        help="record the progress seconds to PATH.far.txt, PATH.floor.txt",
    )
    args = parser.parse_args()
    runs = []
    for number in range(1, args.runs + 1):
        print(f"run {number} of {args.runs}")
        runs.append(measure(args))
        _report(runs[-1])
    write_runs(args.json, runs)


if __name__ == "__main__":
    main()
