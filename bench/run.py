"""Benchmark flask-async-request against a bare Flask view and the usual Flask + Celery pattern.

    apt-get install -y wrk        # the load generator (Debian package)
    .venv/bin/pip install -U pip && .venv/bin/pip install -e . --group bench
    .venv/bin/python bench/run.py             # three full runs, about a quarter of an hour
    .venv/bin/python bench/run.py --quick     # one short run: checks that everything works

Starts, on loopback: (a) a bare Flask app answering 202, (b) the Flask documentation's
Celery pattern (``task.delay()``, then ``AsyncResult``) on a Redis result backend ("peer"),
(c) the same on Celery's SQLAlchemy result backend in PostgreSQL ("peer-db"), (d)
flask-async-request on PostgreSQL and Redis. Each is served by gunicorn with the same
settings; (b), (c) and (d) get a real ``celery worker`` (prefork, concurrency 2). wrk loads
them from a separate process. The whole benchmark runs ``--runs`` times; it prints every
figure and ratio, and writes ``bench/results.json`` (every run's raw figures),
``bench/results.png`` and the results page ``bench/README.rst``. ``--quick`` writes those
into its log directory instead, leaving ``bench/`` as it is.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as dt
import importlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import redis  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from bench import settings  # noqa: E402

HERE = Path(__file__).resolve().parent
SYSTEMS = ("bare", "peer", "peer-db", "far")
#: The systems with a Celery worker, and the module each one's apps live in.
MODULES = {"peer": "peer", "peer-db": "peer_db", "far": "far"}
QUEUES = {"peer": settings.PEER_QUEUE, "peer-db": settings.PEER_DB_QUEUE, "far": settings.FAR_QUEUE}
PORTS = {"bare": 8101, "peer": 8102, "far": 8103, "peer-db": 8104}
LABELS = {
    "bare": "bare Flask",
    "peer": "peer",
    "peer-db": "peer-db",
    "far": "flask-async-request",
}
GUNICORN = ["--workers", "2", "--worker-class", "sync", "--log-level", "warning"]
HEADER = "X-JOB-AUTHORIZATION"
#: Seconds of ``Prefer: wait=N`` in the long-polling end-to-end figure.
LONG_WAIT = 10
#: End-to-end jobs each system runs before the counted ones.
WARM_UP_JOBS = 10

#: flask-async-request's figure over the peer's ("_vs_peer"), over bare Flask's ("_vs_bare"),
#: or its own; keys ending in "_max" are upper bounds, the others lower bounds.
TARGETS = {
    "poll_pending_vs_peer": 1.0,
    "poll_pending_vs_bare": 0.6,
    "poll_finished_vs_peer": 1.1,
    "poll_finished_vs_bare": 0.6,
    "submit_vs_peer": 1.0,
    "e2e_median_vs_peer_max": 1.0,
    "e2e_wait_median_vs_peer_max": 0.8,
    "throughput_vs_peer": 1.0,
    "web_rss_vs_peer_max": 1.1,
    "worker_rss_vs_peer_max": 1.1,
    "poll_1m_vs_10k_max": 1.1,
    "purge_seconds_max": 60,
    "purge_peak_mb_max": 200,
}

#: The full benchmark, and the short one that checks the script works.
FULL = {"duration": 5, "samples": 100, "burst": 2000, "rows": 1_000_000, "runs": 3}
QUICK = {"duration": 2, "samples": 20, "burst": 200, "rows": 20_000, "runs": 1}


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


# --- systems ---------------------------------------------------------------------------------


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


def far_truncate() -> None:
    from bench.far import app, db

    with app.app_context():
        db.session.execute(sa.text("TRUNCATE async_request_jobs RESTART IDENTITY"))
        db.session.commit()


def far_pending_token() -> str:
    from bench.far import app, db
    from flask_async_request import Job, JobStatus

    with app.app_context():
        params = {"args": [], "kwargs": {}}
        job = Job(worker="bench.far:Noop", params=params, status=JobStatus.WAITING)
        db.session.add(job)
        db.session.commit()
        return job.token


def far_submit_and_wait(client: httpx.Client, wait: int | None = None) -> str:
    """Submit a job and poll until it is done: every 2 ms, or with ``Prefer: wait=N``."""
    token = client.post(f"http://127.0.0.1:{PORTS['far']}/submit").json()["token"]
    url = f"http://127.0.0.1:{PORTS['far']}/async_request/job"
    headers = {HEADER: f"Bearer {token}"}
    if wait:
        headers["Prefer"] = f"wait={wait}"
    while client.get(url, headers=headers).status_code != 200:
        if not wait:
            time.sleep(0.002)
    return token


def peer_submit_and_wait(client: httpx.Client, name: str = "peer") -> str:
    """Submit a task to peer or peer-db and poll its result every 2 ms until it is ready."""
    base = f"http://127.0.0.1:{PORTS[name]}"
    result_id = client.post(f"{base}/submit").json()["result_id"]
    while not client.get(f"{base}/result/{result_id}").json()["ready"]:
        time.sleep(0.002)
    return result_id


def end_to_end(samples: int, run: int) -> dict[str, dict[str, float]]:
    ways: dict[str, Callable[[httpx.Client], str]] = {
        "peer": lambda client: peer_submit_and_wait(client, "peer"),
        "peer-db": lambda client: peer_submit_and_wait(client, "peer-db"),
        "far": far_submit_and_wait,
        "far-wait": lambda client: far_submit_and_wait(client, LONG_WAIT),
    }
    figures = {}
    with httpx.Client(timeout=LONG_WAIT + 20) as client:
        for name in rotated(tuple(ways), run):
            submit_and_wait = ways[name]
            for _ in range(WARM_UP_JOBS):
                submit_and_wait(client)
            times = []
            for _ in range(samples):
                started = time.perf_counter()
                submit_and_wait(client)
                times.append((time.perf_counter() - started) * 1000)
            times.sort()
            figures[name] = {
                "median_ms": statistics.median(times),
                "p95_ms": times[max(int(len(times) * 0.95) - 1, 0)],
            }
    return {name: figures[name] for name in ways}


def wait_for(done: Callable[[], bool], what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not finish in {timeout:.0f} s")
        time.sleep(0.2)


def peer_burst(name: str, count: int, logs: Path) -> tuple[float, dict[str, Any]]:
    """Queue ``count`` tasks for peer or peer-db, then let a worker run them all.

    :returns: jobs per second between the first and the last ``date_done``, and the
        worker's peak RSS.
    """
    module = MODULES[name]
    celery_app = importlib.import_module(f"bench.{module}").celery_app
    task = celery_app.tasks[f"bench.{module}.noop"]
    reset_broker()
    engine = database()
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM celery_taskmeta")
    for _ in range(count):
        task.delay()
    client = redis.Redis.from_url(settings.REDIS_URL)

    def finished() -> int:
        if name == "peer":
            return len(client.keys("celery-task-meta-*"))
        with engine.connect() as conn:
            query = "SELECT count(*) FROM celery_taskmeta WHERE status = 'SUCCESS'"
            return int(conn.exec_driver_sql(query).scalar_one())

    with celery_worker(name, logs) as worker:
        wait_for(lambda: finished() >= count, f"the {name} burst")
        rss = worker_rss(worker)
    if name == "peer":
        done = [
            dt.datetime.fromisoformat(json.loads(client.get(key))["date_done"])  # type: ignore[arg-type]
            for key in client.keys("celery-task-meta-*")
        ]
        first, last = min(done), max(done)
    else:
        with engine.connect() as conn:
            query = "SELECT min(date_done), max(date_done) FROM celery_taskmeta"
            first, last = conn.exec_driver_sql(query).one()
    engine.dispose()
    return (count - 1) / (last - first).total_seconds(), rss


def far_burst(count: int, logs: Path) -> tuple[float, dict[str, Any]]:
    """Queue ``count`` jobs, then let a worker run them all; as :func:`peer_burst`."""
    from bench.far import Noop, app, db
    from flask_async_request import Job

    reset_broker()
    far_truncate()
    with app.app_context():
        for _ in range(count):
            Job.create_and_enqueue(Noop)
    with celery_worker("far", logs) as worker, app.app_context():
        query = sa.text("SELECT count(*) FROM async_request_jobs WHERE status = 'processed'")

        def finished() -> int:
            processed = int(db.session.execute(query).scalar_one())
            db.session.commit()
            return processed

        wait_for(lambda: finished() >= count, "the far burst")
        rss = worker_rss(worker)
        first, last = db.session.execute(
            sa.text("SELECT min(finished_at), max(finished_at) FROM async_request_jobs")
        ).one()
    return (count - 1) / (last - first).total_seconds(), rss


def far_fill(total: int) -> str:
    """Grow the table to ``total`` finished rows two days old; return a token for a middle row."""
    from bench.far import app, db
    from flask_async_request import Job
    from flask_async_request.models import utcnow

    with app.app_context():
        have = db.session.execute(sa.text("SELECT count(*) FROM async_request_jobs")).scalar_one()
        old = utcnow() - dt.timedelta(days=2)
        db.session.execute(
            sa.text(
                "INSERT INTO async_request_jobs (uid, worker, params, status, status_code,"
                " response, attempts, created_at, updated_at, due_at, started_at, finished_at)"
                " SELECT md5(random()::text || i::text), 'bench.far:Noop',"
                " '{\"args\": [], \"kwargs\": {}}', 'processed', 200, '{\"ok\": true}', 1,"
                " :old, :old, :old, :old, :old FROM generate_series(1, :n) AS i"
            ),
            {"old": old, "n": total - have},
        )
        db.session.commit()
        db.session.execute(sa.text("ANALYZE async_request_jobs"))
        db.session.commit()
        job = db.session.get(Job, total // 2)
        assert job is not None
        return job.token


def purge() -> dict[str, float]:
    command = [sys.executable, str(HERE / "purge.py"), "--child"]
    command += ["--database-url", settings.DATABASE_URL]
    child = subprocess.run(command, capture_output=True, text=True, check=True, env=env())
    return json.loads(child.stdout.strip().splitlines()[-1])


# --- the run ---------------------------------------------------------------------------------


def run(args: argparse.Namespace, index: int, logs: Path) -> dict[str, Any]:
    """One full run of the benchmark; ``index`` rotates the order in which systems take turns."""
    started = time.monotonic()
    reset_database()
    reset_broker()
    order = rotated(SYSTEMS, index)
    results: dict[str, Any] = {"order": list(order)}
    load = {"seconds": args.duration, "connections": args.connections}
    base = {name: f"http://127.0.0.1:{port}" for name, port in PORTS.items()}
    far_poll = f"{base['far']}/async_request/job"

    def each(measure: Callable[[str], Any], names: tuple[str, ...] = SYSTEMS) -> dict[str, Any]:
        """``measure`` of every system in ``names``, taking turns in this run's order."""
        figures = {name: measure(name) for name in order if name in names}
        return {name: figures[name] for name in names}

    with contextlib.ExitStack() as stack:
        web = {name: stack.enter_context(gunicorn(name, logs)) for name in SYSTEMS}
        for port in PORTS.values():
            wait_port(port)

        print("  polls of a pending job ...")
        far_pending = far_pending_token()
        pending = {
            "bare": (f"{base['bare']}/poll", None),
            "peer": (f"{base['peer']}/result/{uuid.uuid4()}", None),
            "peer-db": (f"{base['peer-db']}/result/{uuid.uuid4()}", None),
            "far": (far_poll, bearer(far_pending)),
        }
        for url, header in pending.values():
            warm_up(url, header)
        results["poll_pending"] = each(lambda n: wrk(pending[n][0], header=pending[n][1], **load))
        print("  submissions (no worker running) ...")
        results["submit"] = each(lambda n: wrk(f"{base[n]}/submit", post=True, **load))
        reset_broker()
        far_truncate()

        with contextlib.ExitStack() as workers, httpx.Client(timeout=30) as client:
            for name in MODULES:
                workers.enter_context(celery_worker(name, logs))
            finished = {
                "bare": (f"{base['bare']}/poll", None),
                "peer": (f"{base['peer']}/result/{peer_submit_and_wait(client, 'peer')}", None),
                "peer-db": (
                    f"{base['peer-db']}/result/{peer_submit_and_wait(client, 'peer-db')}",
                    None,
                ),
                "far": (far_poll, bearer(far_submit_and_wait(client))),
            }
            print("  polls of a finished job ...")
            results["poll_finished"] = each(
                lambda n: wrk(finished[n][0], header=finished[n][1], **load)
            )
            print(f"  end-to-end latency ({args.samples} jobs each, polling and long polling) ...")
            results["end_to_end"] = end_to_end(args.samples, index)
        results["rss_mb"] = {"web": {name: web_rss(web[name]) for name in SYSTEMS}}

        print(f"  worker throughput (burst of {args.burst:,}) ...")
        bursts = each(
            lambda n: (
                far_burst(args.burst, logs) if n == "far" else peer_burst(n, args.burst, logs)
            ),
            tuple(MODULES),
        )
        results["throughput"] = {name: rate for name, (rate, _) in bursts.items()}
        results["rss_mb"]["worker"] = {name: rss for name, (_, rss) in bursts.items()}

        print("  poll latency by table size ...")
        far_truncate()
        results["poll_by_rows"] = {}
        for rows in (10_000, args.rows):
            token = far_fill(rows)
            results["poll_by_rows"][str(rows)] = wrk(far_poll, header=bearer(token), **load)

    print(f"  purge of {args.rows:,} finished rows ...")
    results["purge"] = purge()
    results["seconds"] = time.monotonic() - started
    return results


# --- figures and ratios ----------------------------------------------------------------------


def web_mb(run: dict[str, Any], name: str) -> float:
    """The web figure: the largest peak RSS among the system's gunicorn workers."""
    return max(run["rss_mb"]["web"][name])


def worker_mb(run: dict[str, Any], name: str) -> float:
    """The worker figure: the burst worker's main process and pool children, summed."""
    rss = run["rss_mb"]["worker"][name]
    return float(rss["main"] + sum(rss["pool"]))


def ratios(r: dict[str, Any], rows: int, peer: str = "peer") -> dict[str, float]:
    """One run's ratios, the ``_vs_peer`` ones against ``peer`` (peer or peer-db)."""

    def rps(figure: str, system: str) -> float:
        return float(r[figure][system]["rps"])

    e2e, by_rows = r["end_to_end"], r["poll_by_rows"]
    return {
        "poll_pending_vs_peer": rps("poll_pending", "far") / rps("poll_pending", peer),
        "poll_pending_vs_bare": rps("poll_pending", "far") / rps("poll_pending", "bare"),
        "poll_finished_vs_peer": rps("poll_finished", "far") / rps("poll_finished", peer),
        "poll_finished_vs_bare": rps("poll_finished", "far") / rps("poll_finished", "bare"),
        "submit_vs_peer": rps("submit", "far") / rps("submit", peer),
        "e2e_median_vs_peer_max": e2e["far"]["median_ms"] / e2e[peer]["median_ms"],
        "e2e_wait_median_vs_peer_max": e2e["far-wait"]["median_ms"] / e2e[peer]["median_ms"],
        "throughput_vs_peer": r["throughput"]["far"] / r["throughput"][peer],
        "web_rss_vs_peer_max": web_mb(r, "far") / web_mb(r, peer),
        "worker_rss_vs_peer_max": worker_mb(r, "far") / worker_mb(r, peer),
        "poll_1m_vs_10k_max": by_rows[str(rows)]["p50_ms"] / by_rows["10000"]["p50_ms"],
        "purge_seconds_max": r["purge"]["seconds"],
        "purge_peak_mb_max": r["purge"]["peak_rss_mb"],
    }


def spread(values: list[float]) -> tuple[float, float, float]:
    """Minimum, median and maximum."""
    return min(values), statistics.median(values), max(values)


def ratio_spreads(results: dict[str, Any], peer: str = "peer") -> dict[str, tuple[float, ...]]:
    each = [ratios(r, results["rows"], peer) for r in results["runs"]]
    return {key: spread([q[key] for q in each]) for key in TARGETS}


def met(name: str, value: float) -> bool:
    target = TARGETS[name]
    return value <= target if name.endswith("_max") else value >= target


def median_of(results: dict[str, Any], figure: Callable[[dict[str, Any]], float]) -> float:
    return statistics.median(figure(r) for r in results["runs"])


def table(results: dict[str, Any]) -> list[list[str]]:
    vs_peer, vs_peer_db = ratio_spreads(results), ratio_spreads(results, "peer-db")
    big = f"{results['rows']:,}"
    workers = tuple(MODULES)

    def med(figure: Callable[[dict[str, Any]], float], digits: int = 0) -> str:
        return f"{median_of(results, figure):,.{digits}f}"

    def per_system(
        figure: Callable[[dict[str, Any], str], float], systems: tuple[str, ...] = SYSTEMS
    ) -> list[str]:
        """The median of ``figure`` for each system of ``systems``; blank for the others."""

        def of(system: str) -> Callable[[dict[str, Any]], float]:
            return lambda r: figure(r, system)

        return [med(of(system)) if system in systems else "" for system in SYSTEMS]

    def rps(figure: str) -> list[str]:
        return per_system(lambda r, system: r[figure][system]["rps"])

    def ratio(values: tuple[float, ...]) -> str:
        low, middle, high = values
        if len(results["runs"]) == 1:
            return f"{middle:.2f}"
        return f"{low:.2f} / {middle:.2f} / {high:.2f}"

    def row(label: str, cells: list[str], key: str) -> list[str]:
        sign = "<=" if key.endswith("_max") else ">="
        versus = "x bare" if "_vs_bare" in key else "x peer" if "_vs_peer" in key else ""
        shown = "" if key.startswith("purge") else ratio(vs_peer[key])
        against_db = ratio(vs_peer_db[key]) if "_vs_peer" in key else ""
        verdict = "yes" if met(key, vs_peer[key][1]) else "NO"
        return [label, *cells, shown, f"{sign} {TARGETS[key]}{versus}", verdict, against_db]

    def e2e(way: str, field: str = "median_ms") -> str:
        return med(lambda r: r["end_to_end"][way][field], 1)

    def only_far(cell: str) -> list[str]:
        return ["", "", "", cell]

    def by_rows(rows: str) -> str:
        return med(lambda r: r["poll_by_rows"][rows]["p50_ms"], 2)

    blank = ["", "", "", ""]
    header = ["figure", *(LABELS[s] for s in SYSTEMS), "ratio", "target", "met"]
    return [
        [*header, "ratio to peer-db"],
        row("poll, pending job (req/s)", rps("poll_pending"), "poll_pending_vs_peer"),
        row("poll, pending job vs bare", blank, "poll_pending_vs_bare"),
        row("poll, finished job (req/s)", rps("poll_finished"), "poll_finished_vs_peer"),
        row("poll, finished job vs bare", blank, "poll_finished_vs_bare"),
        row("submissions (req/s)", rps("submit"), "submit_vs_peer"),
        row(
            "end-to-end median, polling (ms)",
            ["", e2e("peer"), e2e("peer-db"), e2e("far")],
            "e2e_median_vs_peer_max",
        ),
        [
            "end-to-end p95, polling (ms)",
            *("", e2e("peer", "p95_ms"), e2e("peer-db", "p95_ms"), e2e("far", "p95_ms")),
            *blank,
        ],
        row(
            f"end-to-end median, Prefer: wait={LONG_WAIT} (ms)",
            only_far(e2e("far-wait")),
            "e2e_wait_median_vs_peer_max",
        ),
        ["end-to-end p95, Prefer: wait (ms)", *only_far(e2e("far-wait", "p95_ms")), *blank],
        row(
            f"worker throughput, burst of {results['burst']:,} (jobs/s)",
            per_system(lambda r, system: r["throughput"][system], workers),
            "throughput_vs_peer",
        ),
        row("web process peak RSS (MB)", per_system(web_mb), "web_rss_vs_peer_max"),
        row("worker peak RSS (MB)", per_system(worker_mb, workers), "worker_rss_vs_peer_max"),
        row(
            f"poll p50 at 10,000 / {big} rows (ms)",
            only_far(f"{by_rows('10000')} / {by_rows(str(results['rows']))}"),
            "poll_1m_vs_10k_max",
        ),
        row(
            f"purge of {big} rows (s)",
            only_far(med(lambda r: r["purge"]["seconds"], 1)),
            "purge_seconds_max",
        ),
        row(
            "purge peak memory (MB)",
            only_far(med(lambda r: r["purge"]["peak_rss_mb"])),
            "purge_peak_mb_max",
        ),
    ]


def render(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    rule = "  ".join("=" * w for w in widths)

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    lines = [rule, line(rows[0]), rule]
    lines += [line([c or ".." for c in row]) for row in rows[1:]]
    lines.append(rule)
    return "\n".join(lines)


def chart(results: dict[str, Any], path: Path) -> None:
    """Four panels of medians over the runs, with bars from the minimum to the maximum."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "bare": "#9e9e9e",
        "peer": "#5c6bc0",
        "peer-db": "#ab47bc",
        "far": "#26a69a",
        "far-wait": "#00695c",
    }

    def bars(axis: Any, where: list[float], figures: list[list[float]], **kw: Any) -> None:
        low, middle, high = zip(*(spread(values) for values in figures), strict=True)
        errors = [[m - lo for m, lo in zip(middle, low, strict=True)]]
        errors.append([hi - m for m, hi in zip(middle, high, strict=True)])
        axis.bar(where, middle, yerr=errors, capsize=3, **kw)

    runs = results["runs"]
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.8))
    groups = [
        ("poll, pending", "poll_pending"),
        ("poll, finished", "poll_finished"),
        ("submit", "submit"),
    ]
    width = 0.2
    for i, system in enumerate(SYSTEMS):
        figures = [[r[key][system]["rps"] for r in runs] for _, key in groups]
        where = [g + (i - 1.5) * width for g in range(len(groups))]
        bars(axes[0], where, figures, width=width, label=LABELS[system], color=colors[system])
    axes[0].set_xticks(range(len(groups)), [g for g, _ in groups])
    axes[0].set_ylabel("requests / s")
    axes[0].set_title("HTTP throughput")
    # Above the bars, which reach the top of the panel (bare Flask's).
    axes[0].set_ylim(top=axes[0].get_ylim()[1] * 1.3)
    axes[0].legend(fontsize=8, ncols=2, loc="upper center")

    ways = ("peer", "peer-db", "far", "far-wait")
    figures = [[r["end_to_end"][way]["median_ms"] for r in runs] for way in ways]
    bars(axes[1], list(range(len(ways))), figures, color=[colors[w] for w in ways])
    far = "flask-async-\nrequest,\n"
    names = ["peer", "peer-db", f"{far}polling", f"{far}wait={LONG_WAIT}"]
    axes[1].set_xticks(range(len(ways)), names, fontsize=8)
    axes[1].set_ylabel("ms")
    axes[1].set_title("end-to-end latency, median")

    workers = tuple(MODULES)
    figures = [[r["throughput"][s] for r in runs] for s in workers]
    bars(axes[2], list(range(len(workers))), figures, color=[colors[s] for s in workers])
    axes[2].set_xticks(range(len(workers)), ["peer", "peer-db", "flask-async-request"])
    axes[2].set_ylabel("jobs / s")
    axes[2].set_title(f"worker throughput, burst of {results['burst']:,}")

    for i, system in enumerate(workers):
        figures = [[web_mb(r, system) for r in runs], [worker_mb(r, system) for r in runs]]
        where = [g + (i - 1) * 0.27 for g in range(2)]
        bars(axes[3], where, figures, width=0.27, label=LABELS[system], color=colors[system])
    axes[3].set_xticks([0, 1], ["web process", "worker, all processes"])
    axes[3].set_ylabel("MB")
    axes[3].set_title("peak RSS")
    axes[3].legend(fontsize=8)

    count = len(runs)
    spread_note = f"median of {count} runs, bars from min to max" if count > 1 else "one run"
    fig.suptitle(
        f"flask-async-request benchmark, {results['when']}"
        f" ({results['machine']['cpus']} cores; {spread_note})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PAGE = """\
Benchmarks
==========

``bench/run.py`` measures flask-async-request against the ceiling, a bare Flask view that
answers 202, and two peers, both the pattern of the Flask documentation's Celery page
(``task.delay()``, then ``AsyncResult``):

* **peer**: results on Celery's Redis result backend, kept in Redis only;
* **peer-db**: results on Celery's SQLAlchemy database result backend
  (``result_backend = "db+postgresql+psycopg://..."``) in the same PostgreSQL database,
  the choice for results that outlive Redis. Its broker is Redis, as the peer's.

flask-async-request keeps its jobs durable in PostgreSQL. The targets are set against the
peer; every ratio is also given against peer-db.

How it runs
-----------

* Each app is served by gunicorn (``{gunicorn}``) on a port of its own; the peers and
  flask-async-request each get a ``celery worker`` (prefork, concurrency 2) on a Redis queue
  of their own. PostgreSQL {postgresql} holds flask-async-request's jobs and peer-db's
  results; Redis {redis} is every broker and the peer's result store. Celery creates
  peer-db's result tables (``celery_taskmeta``) when a run starts, before any measurement.
  Outside a Celery pool process, Celery's database backend makes a new engine without a
  pool for each read: in gunicorn, each ``AsyncResult`` state read opens a new PostgreSQL
  connection, and the view of the Flask documentation reads the state three times while
  a task is pending (``ready()``, ``successful()``, ``ready()``), once when it is done.
* The figures below come from {runs_text} of the whole benchmark, in one invocation
  (``--runs``, 3 by default). Each run starts from a fresh database and an empty Redis
  database; inside a run the systems take turns figure by figure, and the order of the
  turns rotates from one run to the next.
* wrk loads the HTTP figures from its own process: {connections} connections for {seconds} s
  each, after a one-second warm-up run that is not counted. Before the first figure every
  web process has served a few polls, so its imports and set-ups (a connection pool,
  Celery's result backend) are not counted either. The pending poll asks the peers
  about an id no one submitted (Celery answers ``PENDING``) and flask-async-request about a
  stored waiting job. Submissions are measured with no worker running, so they time the
  publishing alone.
* End-to-end latency: one client submits a job that does nothing and polls every 2 ms until it
  is done, {samples} times in a row after {warm_up} not counted. flask-async-request is also
  measured with long polling: after the submission, one ``GET`` with ``Prefer: wait={wait}``,
  which answers when the job ends. That figure's target is against the peer's polling one.
* Worker throughput: {burst:,} jobs are queued with no worker running; then a worker starts, and
  the figure is (jobs - 1) over the time between the first and the last job finished, as each
  system recorded it (``finished_at``; Celery's ``date_done``, in Redis or in
  ``celery_taskmeta``).
* Memory: the peak resident set size of a process, ``VmHWM`` in ``/proc/<pid>/status``. The
  web figure is the largest peak among the system's two gunicorn worker processes (the master
  serves no request), read after the polls, the submissions and the end-to-end runs, so it
  covers all of that load. The worker figure is the sum of the peaks of the ``celery worker``
  started for the throughput burst: its main process and its two pool children, read when the
  burst is done.
* Poll latency by table size: wrk's median latency polling a finished job in a table of 10,000
  rows, then of {rows:,}. The purge deletes those {rows:,} finished rows in a fresh process
  (peak RSS of that process).
* Everything runs on one {cpus}-core machine, load generator included, so absolute figures are
  low and ratios are what to read.

Reproduce::

    apt-get install -y wrk
    python3 -m venv .venv && .venv/bin/pip install -U pip
    .venv/bin/pip install -e . --group bench
    .venv/bin/python bench/run.py             # --runs 3 by default
    .venv/bin/python bench/run.py --quick     # a short run that checks everything works

It needs PostgreSQL on 127.0.0.1:5432 (it creates the database ``far_bench``) and Redis on
127.0.0.1:6379 (database 13); ``BENCH_DATABASE_URL`` and ``BENCH_REDIS_URL`` point elsewhere.
``--quick`` (short wrk runs, small bursts, one run) writes its page, chart and figures into
its log directory, not here. ``--page-only`` rewrites this page and the chart from
``results.json``, which keeps the raw figures of every run.

Two more, each a module of its own:

* ``python -m bench.inprocess`` times submissions and polls in process with
  Flask's test client (no HTTP server, no load generator on the same cores),
  this library against the peer's ``task.delay()`` view, rounds alternating;
  ``--profile`` prints cProfile's view of one submission.
* ``python -m bench.floor`` times the round trips the others are made of: a
  durable INSERT, one with ``synchronous_commit`` off, a SELECT by primary key
  and a Redis ``LPUSH``.
* ``python -m bench.longpoll --waiters 1000`` holds 1,000 ``Prefer: wait``
  polls on one job in one gunicorn process (gthread, then gevent) while 10
  clients poll it plainly, then ends the job, and prints how soon the waiters
  were answered, any 5xx, the plain polls' latency without and with the
  waiters, and the database connections the web process held meanwhile; then
  the floor on the same server, bare Flask answering as many requests held in
  its view and released at once.


Last run
--------

{when}, Python {python}, {runs_text}.

{reading}

{table}

.. image:: results.png
   :alt: HTTP throughput, end-to-end latency, worker throughput and peak memory of the systems

Targets not met, and why
------------------------

{analysis}

{long_polls}
"""

#: Why a target can fail, in this design; shown for the targets a run misses.
REASONS = {
    "poll_pending_vs_peer": (
        "A poll verifies a JWT and reads one row by primary key from PostgreSQL; the peer's"
        " view reads one Redis key (three times over while a task is pending: ready(),"
        " successful(), ready())."
    ),
    "poll_pending_vs_bare": (
        "The bare view does no I/O at all; a poll verifies a JWT (cached after its first"
        " check) and reads one row by primary key from PostgreSQL. In process, with Flask's"
        " test client, that read is about 180 us of a poll's 500-620 us, bare Flask's view"
        " 170-250 us, and this library's own Python the rest, about 70 us."
    ),
    "poll_finished_vs_peer": (
        "A finished poll returns the stored reply in its JSON envelope, read from PostgreSQL;"
        " the peer reads one small Redis value. Both are one round trip; the rest is Python"
        " on the same cores as the load generator."
    ),
    "poll_finished_vs_bare": (
        "The bare view does no I/O at all; a finished poll verifies a JWT, reads one row from"
        " PostgreSQL and returns the stored reply: the read is the cost, as for a pending"
        " poll."
    ),
    "submit_vs_peer": (
        "A submission makes the job durable before answering: one INSERT, committed at once,"
        " that waits for PostgreSQL's WAL flush, then one Redis LPUSH of the job's message."
        " Neither peer stores anything until a worker runs the task; their publish goes"
        " through Celery's apply_async. ``python -m bench.floor`` times the round trips on"
        " this machine: the durable INSERT alone costs about twice the LPUSH. The durable row"
        " is what lets a reply outlive restarts and a job never be lost; the cost shrinks"
        " with a faster disk, or with synchronous_commit = off, which gives up that"
        " durability. py-spy on a gunicorn worker under wrk's submissions: 28% of its"
        " samples in the INSERT (23% in psycopg's execute, sending and waiting), 20% in the"
        " publish (15% in redis-py's LPUSH), about 5% in the ORM's handing back of the Job"
        " and 3% in the JWT; the INSERT is what the peers do not pay."
    ),
    "e2e_median_vs_peer_max": (
        "A job's round trip includes its durable submission and two more statements in the"
        " worker: the claim, which does not wait for the WAL flush, and the reply, which"
        " does."
    ),
    "e2e_wait_median_vs_peer_max": (
        "A long poll takes the polling interval out of the round trip, but not the durable"
        " submission or the worker's claim and durable reply. The answer leaves when the"
        " ending statement's NOTIFY reaches the web process's listener and the row is read"
        " once more."
    ),
    "throughput_vs_peer": (
        "Each job costs two statements in the worker: the atomic claim (which makes"
        " duplicate deliveries harmless; it does not wait for the WAL flush) and the stored"
        " reply, a durable commit that also sends the NOTIFY waking long polls. The peer"
        " writes its result to Redis, and peer-db commits one row per task to PostgreSQL."
        " All three go through the same Celery machinery. Both statements run precompiled"
        " on a raw cursor; in process a job's claim and reply cost a worker about 300 us of"
        " CPU and 750 us of wall time, nearly all of it the two round trips and"
        " PostgreSQL's work on them (each changes the indexed status column, so each"
        " UPDATE writes a new entry in every index of the table)."
    ),
    "web_rss_vs_peer_max": (
        "A web process of flask-async-request loads Flask-SQLAlchemy, SQLAlchemy's ORM, the"
        " psycopg driver and a JWT library besides Celery, and keeps a pool of database"
        " connections; once a client long-polls it also runs a listener thread on a"
        " connection of its own. The peer's web process loads Celery and its Redis client."
        " Measured by importing them in turn in the benchmark's venv: Flask, Celery and"
        " Redis take a process to 46 MB; SQLAlchemy's ORM with Flask-SQLAlchemy add 17 MB,"
        " psycopg 11 MB, PyJWT 1 MB and this library with the app 3 MB. The SQL stack is"
        " the difference, and peer-db carries the same."
    ),
    "worker_rss_vs_peer_max": (
        "Each process of a flask-async-request worker loads the Flask app with"
        " Flask-SQLAlchemy, SQLAlchemy's ORM and psycopg, and each pool child opens a"
        " connection pool of its own; the peer's worker loads Celery and its Redis client."
        " As for the web process, SQLAlchemy's ORM and psycopg are 28 MB of each of the"
        " three processes."
    ),
    "poll_1m_vs_10k_max": (
        "The lookup is by primary key: a million rows add at most one B-tree level; a miss"
        " here is within the ratio's run-to-run spread, which the min / median / max shows."
    ),
    "purge_seconds_max": "The purge deletes in batches of short transactions.",
    "purge_peak_mb_max": "The purge holds one batch of ids at a time.",
}


def analysis(results: dict[str, Any]) -> str:
    vs_peer, vs_peer_db = ratio_spreads(results), ratio_spreads(results, "peer-db")
    missed = [key for key in TARGETS if not met(key, vs_peer[key][1])]
    if not missed:
        return "Every target held on the median of the runs."

    def figure(key: str) -> str:
        low, middle, high = vs_peer[key]
        shown = f"{middle:.2f}" if low == high else f"{middle:.2f}, {low:.2f} to {high:.2f}"
        if "_vs_peer" in key:
            shown += f"; {vs_peer_db[key][1]:.2f} against peer-db"
        return shown

    return "\n".join(f"* ``{key}`` ({figure(key)}): {REASONS[key]}" for key in missed)


def reading(runs: int) -> str:
    """How to read the table of ``runs`` runs."""
    text = (
        "A ratio is flask-async-request's figure over the other system's (over bare Flask's"
        ' in the rows "vs bare").'
    )
    if runs > 1:
        text = (
            f"Each system's figure is its median over the {runs} runs. {text} It is given as"
            " the minimum / median / maximum of its values in the runs; a target is met when"
            " the median meets it."
        )
    text += (
        ' "ratio to peer-db" is the same ratio against peer-db, for comparison; the targets'
        " are not set against it."
    )
    return textwrap.fill(text, width=92)


def page(results: dict[str, Any], rows: list[list[str]]) -> str:
    count = len(results["runs"])
    several = count > 1
    return PAGE.format(
        gunicorn=" ".join(GUNICORN),
        table=render(rows),
        cpus=results["machine"]["cpus"],
        python=results["machine"]["python"],
        postgresql=results["machine"]["postgresql"],
        redis=results["machine"]["redis"],
        **results["load"],
        samples=results["samples"],
        warm_up=WARM_UP_JOBS,
        wait=LONG_WAIT,
        burst=results["burst"],
        rows=results["rows"],
        when=results["when"],
        runs_text=f"{count} runs" if several else "one run",
        reading=reading(count),
        analysis=analysis(results),
        long_polls=long_polls(HERE / "longpoll.json"),
    )


def long_polls(path: Path) -> str:
    """The section of ``bench.longpoll``'s last runs, as ``--json`` wrote them."""
    if not path.exists():
        return ""
    found = json.loads(path.read_text())
    # Runs written before gevent was measured too were all gthread, with no floor.
    for run in found["runs"]:
        run.setdefault("server", "gthread")
    servers = list(dict.fromkeys(run["server"] for run in found["runs"]))
    by_server = {name: [r for r in found["runs"] if r["server"] == name] for name in servers}

    def spread(pick: Callable[[dict[str, Any]], float], digits: int = 0) -> list[str]:
        cells = []
        for runs in by_server.values():
            values = [pick(run) for run in runs]
            middle = statistics.median(values)
            cells.append(
                f"{middle:,.{digits}f} ({min(values):,.{digits}f} - {max(values):,.{digits}f})"
            )
        return cells

    rows = [
        ["figure", *(f"{name}: median (min - max)" for name in servers)],
        ["waiters, each holding Prefer: wait=60", *spread(lambda r: r["waiters"])],
        ["answered, p50 after the job's end (ms)", *spread(lambda r: r["answer_ms"]["p50"])],
        ["answered, p99 after the job's end (ms)", *spread(lambda r: r["answer_ms"]["p99"])],
        ["answered, last after the job's end (ms)", *spread(lambda r: r["answer_ms"]["max"])],
        ["5xx answers", *spread(lambda r: r["server_errors"])],
        ["plain polls alone, p99 (ms)", *spread(lambda r: r["plain_alone_ms"]["p99"], 1)],
        [
            "plain polls beside the waiters, p99 (ms)",
            *spread(lambda r: r["plain_beside_ms"]["p99"], 1),
        ],
        [
            "database connections of the web process",
            *spread(lambda r: r["database_connections"]),
        ],
    ]
    if all("floor" in run for run in found["runs"]):
        rows += [
            [
                "floor: bare Flask, as many held requests released, p50 (ms)",
                *spread(lambda r: r["floor"]["answer_ms"]["p50"]),
            ],
            ["floor: p99 (ms)", *spread(lambda r: r["floor"]["answer_ms"]["p99"])],
            ["floor: last (ms)", *spread(lambda r: r["floor"]["answer_ms"]["max"])],
        ]
    runs = len(next(iter(by_server.values())))
    return LONG_POLLS.format(
        when=found["when"], python=found["python"], runs=runs, table=render(rows)
    )


LONG_POLLS = """\
Long polls at scale
-------------------

``python -m bench.longpoll --runs {runs} --json bench/longpoll.json``, {when}, Python {python}:
one gunicorn process (gthread, then gevent) holds 1,000 ``Prefer: wait=60`` polls of one
pending job, read by one client thread with one ``epoll``, while 10 clients poll it
plainly; then the job ends. The floor is bare Flask on the same server: as many requests
held on an event in the view and released at once, with no job, token or database.

{table}

Each answer is a whole response through Flask and gunicorn from the one process, so the
last leaves about 1,000 times a response's own cost after the end. The floor measures that
cost with nothing of this library in it, and on this machine the floor itself is over
100 ms: the target lies under what one Python process serves here, whatever wakes the
requests. The long polls are answered a little after the floor; the difference is what
each woken request does besides (it takes the one read of the end shared by all, checks
it against its token and sends the stored reply), not the wake-up, which is one NOTIFY and
one read. More processes divide the time; gevent's greenlets answer about three times
sooner than gthread's threads. The waits hold no database connection: the web process
keeps its pool's few and the listener's one.
"""


def main() -> None:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--runs", type=int, help=f"full runs of the benchmark (default {FULL['runs']})"
    )
    parser.add_argument(
        "--duration", type=int, help=f"seconds of each wrk run (default {FULL['duration']})"
    )
    parser.add_argument("--connections", type=int, default=4, help="wrk connections")
    parser.add_argument(
        "--samples", type=int, help=f"end-to-end jobs per system (default {FULL['samples']})"
    )
    parser.add_argument(
        "--burst", type=int, help=f"jobs in the throughput burst (default {FULL['burst']:,})"
    )
    parser.add_argument(
        "--rows", type=int, help=f"rows for the size and purge figures (default {FULL['rows']:,})"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="one short run (2 s wrk runs, a burst of 200, 20,000 rows) that checks everything"
        " works; writes its results into its log directory, not into bench/",
    )
    parser.add_argument(
        "--page-only",
        action="store_true",
        help="rewrite the results page and chart from bench/results.json, measuring nothing",
    )
    args = parser.parse_args()
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    if args.rows < 10_000:
        parser.error("--rows must be at least 10,000 (the smaller table of the size figure)")

    out = HERE
    if args.page_only:
        results = json.loads((HERE / "results.json").read_text())
        if "runs" not in results:
            sys.exit("Error: bench/results.json predates runs and peer-db; run the benchmark.")
    else:
        if shutil.which("wrk") is None:
            sys.exit("Error: wrk is not installed; `apt-get install -y wrk` installs it.")
        logs = Path(tempfile.mkdtemp(prefix="far-bench-"))
        print(f"logs in {logs}")
        if args.quick:
            out = logs
        machine = {"cpus": os.cpu_count(), "python": sys.version.split()[0], **server_versions()}
        started = time.monotonic()
        runs = []
        for index in range(args.runs):
            print(f"run {index + 1} of {args.runs}:")
            runs.append(run(args, index, logs))
            print(f"  ({runs[-1]['seconds']:.0f} s)")
        results = {
            "machine": machine,
            "when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": time.monotonic() - started,
            "load": {"seconds": args.duration, "connections": args.connections},
            "samples": args.samples,
            "burst": args.burst,
            "rows": args.rows,
            "runs": runs,
        }
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    rows = table(results)
    print()
    print(render(rows))
    chart(results, out / "results.png")
    (out / "README.rst").write_text(page(results, rows))
    print(f"\nwrote {out / 'results.json'}, {out / 'results.png'} and {out / 'README.rst'}")


if __name__ == "__main__":
    main()
