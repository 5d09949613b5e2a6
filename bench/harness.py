"""The benchmark's harness: its services, its processes, its load and its memory readings.

Starts and stops the gunicorn servers and ``celery worker`` processes of the systems under
test, resets PostgreSQL and Redis between runs, loads an HTTP endpoint with wrk and reads a
process's peak memory. It measures nothing on its own: ``bench.scenarios`` does, with it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import platform
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import redis
import sqlalchemy as sa

from bench import settings

ROOT = Path(__file__).resolve().parents[1]
HERE = Path(__file__).resolve().parent
SYSTEMS = ("bare", "peer", "peer-db", "far")
#: The systems with a Celery worker, and the module each one's apps live in.
MODULES = {"peer": "peer", "peer-db": "peer_db", "far": "far"}
QUEUES = {"peer": settings.PEER_QUEUE, "peer-db": settings.PEER_DB_QUEUE, "far": settings.FAR_QUEUE}
PORTS = {"bare": 8101, "peer": 8102, "far": 8103, "peer-db": 8104}
GUNICORN = ["--workers", "2", "--worker-class", "sync", "--log-level", "warning"]
HEADER = "X-JOB-AUTHORIZATION"


def env() -> dict[str, str]:
    environment = dict(os.environ)
    paths = [str(ROOT), os.environ.get("PYTHONPATH", "")]
    environment["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return environment


def bearer(token: str) -> str:
    return f"{HEADER}: Bearer {token}"


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def wait_for(done: Callable[[], bool], what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not finish in {timeout:.0f} s")
        time.sleep(0.2)


# --- processes -------------------------------------------------------------------------------


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@contextlib.contextmanager
def process(command: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield proc
    finally:
        stop(proc)


def gunicorn(name: str, logs: Path) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    target = f"bench.{MODULES.get(name, name)}:app"
    command = [sys.executable, "-m", "gunicorn", *GUNICORN]
    command += ["-b", f"127.0.0.1:{PORTS[name]}", target]
    return process(command, logs / f"gunicorn-{name}.log")


def celery_worker(
    name: str, logs: Path
) -> contextlib.AbstractContextManager[subprocess.Popen[bytes]]:
    module = MODULES[name]
    command = [
        sys.executable, "-m", "celery", "-A", f"bench.{module}:celery_app", "worker",
        "--pool", "prefork", "--concurrency", "2", "--queues", QUEUES[name],
        "--loglevel", "WARNING", "--without-mingle", "--without-gossip", "--without-heartbeat",
        "--hostname", f"bench-{name}-{uuid.uuid4().hex[:6]}@%h",
    ]  # fmt: skip
    return process(command, logs / f"worker-{name}.log")


def rotated(names: tuple[str, ...], run: int) -> tuple[str, ...]:
    """``names`` starting at the ``run``-th, so the order of the turns changes from run to run."""
    shift = run % len(names)
    return names[shift:] + names[:shift]


class Turns:
    """Measures systems one after the other in a run's order, and keys the figures as usual."""

    def __init__(self, order: tuple[str, ...]) -> None:
        self.order = order

    def __call__(
        self, measure: Callable[[str], Any], names: tuple[str, ...] = SYSTEMS
    ) -> dict[str, Any]:
        """``measure`` of every system in ``names``, taking turns in this run's order."""
        figures = {name: measure(name) for name in self.order if name in names}
        return {name: figures[name] for name in names}


# --- memory ----------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The ids of the processes whose parent is ``pid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # ended meanwhile
        # The command name, in parentheses, may hold spaces: the parent id is the second
        # field after it.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def peak_rss_mb(pid: int) -> float:
    """The peak resident set size of process ``pid`` so far (``VmHWM``), in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def web_rss(master: subprocess.Popen[bytes]) -> list[float]:
    """The peak RSS of each gunicorn worker process (the master serves no request)."""
    workers = children(master.pid)
    if not workers:
        raise RuntimeError(f"gunicorn {master.pid} has no worker processes")
    return [peak_rss_mb(pid) for pid in workers]


def worker_rss(worker: subprocess.Popen[bytes]) -> dict[str, Any]:
    """The peak RSS of a ``celery worker``'s main process and of each of its pool children."""
    pool = children(worker.pid)
    if not pool:
        raise RuntimeError(f"celery worker {worker.pid} has no pool processes")
    return {"main": peak_rss_mb(worker.pid), "pool": [peak_rss_mb(pid) for pid in pool]}


# --- load ------------------------------------------------------------------------------------


_LATENCY = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(
    url: str, seconds: int, connections: int, header: str | None = None, post: bool = False
) -> dict[str, Any]:
    """Load ``url`` with wrk; return requests per second and latency percentiles in ms.

    A one-second run first warms the server up (imports, pools, caches); only
    the second run is measured.
    """
    _wrk_output(url, 1, connections, header, post)
    output = _wrk_output(url, seconds, connections, header, post)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if errors:
        raise RuntimeError(f"{url} answered {errors.group(1)} errors:\n{output}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))  # type: ignore[union-attr]
    if rps == 0:
        raise RuntimeError(f"{url} answered no request in {seconds} s:\n{output}")
    latency = {f"p{p}_ms": float(v) * _UNIT[u] for p, v, u in _LATENCY.findall(output)}
    figure: dict[str, Any] = {"rps": rps, **latency}
    socket_errors = re.search(r"Socket errors: (.*)", output)
    if socket_errors:
        print(f"    {url}: socket errors: {socket_errors.group(1)}")
        figure["socket_errors"] = socket_errors.group(1)
    return figure


def warm_up(url: str, header: str | None = None, requests: int = 16) -> None:
    """GET ``url`` ``requests`` times, eight at once, so every gunicorn worker serves some.

    A web process's first requests pay for imports and set-ups (a pool, Celery's
    result backend and its table check): not a cost the figures should carry.
    """
    headers = dict([header.split(": ", 1)]) if header else {}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = pool.map(lambda _: httpx.get(url, headers=headers, timeout=60), range(requests))
        for answer in answers:
            answer.raise_for_status()


def _wrk_output(url: str, seconds: int, connections: int, header: str | None, post: bool) -> str:
    # A slow system's requests are counted, not dropped at wrk's default timeout of 2 s.
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s", "--latency"]
    if header:
        command += ["-H", header]
    with tempfile.TemporaryDirectory() as scratch:
        if post:
            script = Path(scratch) / "post.lua"
            script.write_text('wrk.method = "POST"\n')
            command += ["-s", str(script)]
        return subprocess.run([*command, url], capture_output=True, text=True, check=True).stdout


# --- services --------------------------------------------------------------------------------


def reset_database() -> None:
    """A fresh database with flask-async-request's table and peer-db's result tables."""
    url = sa.make_url(settings.DATABASE_URL)
    admin = sa.create_engine(url.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {url.database} WITH (FORCE)")
        conn.exec_driver_sql(f"CREATE DATABASE {url.database}")
    admin.dispose()
    from bench import peer_db
    from bench.far import app, db
    from flask_async_request.state import get_state

    with app.app_context():
        # The drop cut the connections an earlier run left in this process's pools.
        db.engine.dispose()
        get_state().store().dispose()
        db.create_all()
    # Celery creates its result tables when the backend is first set up (the default
    # database_create_tables_at_setup), so no measured request pays for it.
    peer_db.celery_app.backend.ResultSession().close()


def reset_broker() -> None:
    redis.Redis.from_url(settings.REDIS_URL).flushdb()


def database() -> sa.Engine:
    return sa.create_engine(settings.DATABASE_URL, poolclass=sa.pool.NullPool)


def server_versions() -> dict[str, str]:
    engine = database()
    with engine.connect() as conn:
        postgresql = conn.exec_driver_sql("SHOW server_version").scalar_one()
    engine.dispose()
    info = redis.Redis.from_url(settings.REDIS_URL).info("server")
    return {"postgresql": str(postgresql).split()[0], "redis": str(info["redis_version"])}


def write_runs(path: Path | None, runs: list[dict[str, Any]]) -> None:
    """Write every run's figures to ``path`` (``--json``), dated, with Python's version."""
    if path is None:
        return
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    document = {"when": when, "python": platform.python_version(), "runs": runs}
    path.write_text(json.dumps(document, indent=2) + "\n")


def callgrind_instructions(module: str, *arguments: str) -> int:
    """The instructions ``python -m module arguments`` executes, counted by callgrind.

    The same from one run to the next whatever else the machine runs (string
    hashing fixed): the benchmarks' ``--instructions`` run each kind of operation
    this way, in a process of its own, and subtract one that makes none.
    """
    with tempfile.TemporaryDirectory() as directory:
        run = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={directory}/out",
                sys.executable,
                "-m",
                module,
                *arguments,
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
    found = re.search(r"Collected : (\d+)", run.stderr)
    assert found, run.stderr[-2000:]
    return int(found.group(1))
