"""CPU and wall time per operation in process, with Flask's test client: the library and its peers.

No HTTP server and no load generator share the two cores here, so the figures
show the code paths themselves. Four systems (this library, the peer, peer-db
and bare Flask, as in ``bench/run.py``) are timed on four operations:

* a submission: ``POST /submit``;
* a poll of a pending job, and of a finished one: the status endpoint, the
  peers' ``AsyncResult`` view (a pending poll asks about an id no one
  submitted, as ``bench/run.py`` does), bare Flask's ``GET /poll``;
* a worker's job: what a worker process runs for one message, through Celery's
  own tracer (``build_tracer``, as a worker calls it): this library claims the
  job, runs a no-op worker and stores its reply; the peers run their no-op
  task and store its result in their result backend (peer-db's engine pooled,
  as in a worker's pool child); bare runs a no-op task that stores nothing.

Each figure is process CPU time (``time.process_time``, every thread of the
process) and wall time per operation, over ``--ops`` operations; each round
times every figure once, in an order that rotates from one round to the next,
and the medians of the rounds are printed, with the ratios of this library's
CPU to the peer's and to bare Flask's. ``--json`` adds the run, under
``--label``, to a file that ``bench/report.py`` reads for the page.
``--profile`` prints cProfile's view of one operation instead (CPU time).
``--instructions`` counts instead the instructions a submission and a worker's
job execute (``--only`` either), this library's and the peer's: process CPU on
a machine shared with other work varies by more than the differences measured
(a submission's follows its ``INSERT``'s wait for the WAL flush), instructions
do not, and are blind to the time spent waiting for the database. As
``bench/result_polls.py`` does for polls, each system's operations are made
``--ops`` times in a process of its own under ``valgrind --tool=callgrind``,
beside one that makes none, after the same set-up and warm-up, with the
set-up's objects frozen out of the garbage collector's scans (``gc.freeze``);
the difference, divided by ``--ops``, is an operation's. Submissions are this
library's through its view's ``Job.create_and_enqueue`` and through
``@asynchronous``, and the peer's.

    .venv/bin/python -m bench.inprocess --rounds 5 --ops 300
    .venv/bin/python -m bench.inprocess --profile submission --ops 1000
    .venv/bin/python -m bench.inprocess --instructions --ops 300
    .venv/bin/python -m bench.inprocess --instructions --only submission --ops 200
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import functools
import gc
import json
import platform
import pstats
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import redis
from celery import Celery, Task
from celery.app.trace import build_tracer

from bench.harness import callgrind_instructions
from bench.settings import DATABASE_URL, FAR_QUEUE, REDIS_URL

DATABASE_NAME = DATABASE_URL.rsplit("/", 1)[-1]

SYSTEMS = ("bare Flask", "peer", "peer-db", "flask-async-request")
OPERATIONS = ("submission", "poll, pending job", "poll, finished job", "worker's job")
#: What --profile takes for each operation.
SHORT_NAMES = {"submission": "submission", "pending": "poll, pending job",
               "poll": "poll, finished job", "job": "worker's job"}  # fmt: skip

#: Times an operation ``ops`` times: CPU and wall microseconds per operation.
Case = Callable[[int], tuple[float, float]]

#: With ``--profile``: enabled while operations are timed, not while they are set up.
_profile: cProfile.Profile | None = None


def _reset() -> None:
    """A fresh benchmark database and empty queues."""
    name = DATABASE_NAME
    with psycopg.connect("host=127.0.0.1 user=postgres dbname=postgres", autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'CREATE DATABASE "{name}"')
    redis.Redis.from_url(REDIS_URL).flushdb()


def _timer(call: Callable[[], Any], ops: int) -> float:
    """Wall microseconds per call, over ``ops`` calls (``bench.floor``'s timer)."""
    started = time.perf_counter()
    for _ in range(ops):
        call()
    return (time.perf_counter() - started) / ops * 1e6


def _measure(calls: Iterator[Callable[[], Any]], ops: int) -> tuple[float, float]:
    """CPU and wall microseconds per call, over the first ``ops`` of ``calls``."""
    work = [next(calls) for _ in range(ops)]
    if _profile is not None:
        _profile.enable()
    cpu, wall = time.process_time(), time.perf_counter()
    for call in work:
        call()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if _profile is not None:
        _profile.disable()
    return cpu / ops * 1e6, wall / ops * 1e6


def _repeat(call: Callable[[], Any], celery_app: Celery | None = None) -> Case:
    """A case that makes the same call each time, with ``celery_app`` the current Celery app."""

    def case(ops: int) -> tuple[float, float]:
        if celery_app is not None:
            # Several Celery apps share this process; shared_task and AsyncResult
            # use the current one, which in each system's own process is its own.
            celery_app.set_current()
        return _measure(_forever(call), ops)

    return case


def _forever(call: Callable[[], Any]) -> Iterator[Callable[[], Any]]:
    while True:
        yield call


def _tracer(celery_app: Celery, name: str) -> Callable[[Any], Any]:
    """What a worker runs for a message of task ``name``: Celery's tracer of the task."""
    task: Task = celery_app.tasks[name]
    trace = build_tracer(name, task, app=celery_app, hostname="inprocess@bench")

    def run(argument: Any) -> Any:
        task_id = str(uuid.uuid4())
        args = () if argument is None else (argument,)
        request = {"id": task_id, "delivery_info": {"routing_key": task.name}}
        return trace(task_id, args, {}, request)

    return run


@contextlib.contextmanager
def _pool_child(celery_app: Celery) -> Iterator[None]:
    """Celery's database backend as in a worker's pool child: one pooled engine.

    Outside a pool child (a web process) it makes an engine with no pool for
    every operation, which is what peer-db's polls pay.
    """
    manager = celery_app.backend.session_manager
    manager.forked = True
    try:
        yield
    finally:
        manager.forked = False


def _cases(operations: tuple[str, ...] = OPERATIONS) -> dict[tuple[str, str], Case]:
    """Every figure's case of ``operations``, its set-up done and each of its calls made once."""
    from bench import bare, far, peer, peer_db

    with far.app.app_context():
        far.db.create_all()
    clients = {
        "bare Flask": bare.app.test_client(),
        "peer": peer.app.test_client(),
        "peer-db": peer_db.app.test_client(),
        "flask-async-request": far.app.test_client(),
    }
    celery_apps: dict[str, Celery | None] = {
        "bare Flask": None,
        "peer": peer.celery_app,
        "peer-db": peer_db.celery_app,
        "flask-async-request": far.celery_app,
    }
    cases: dict[tuple[str, str], Case] = {}
    for system, client in clients.items():
        submit = functools.partial(client.post, "/submit")
        cases["submission", system] = _repeat(submit, celery_apps[system])
    cases.update(_polls(clients))
    cases.update(_jobs())
    chosen = {key: case for key, case in cases.items() if key[0] in operations}
    for case in chosen.values():
        case(3)  # warm up: connections, caches, result tables
    return chosen


def _polls(clients: dict[str, Any]) -> dict[tuple[str, str], Case]:
    """The polls' cases: each system's answer for a pending job and for a finished one."""
    from bench import far, peer, peer_db
    from flask_async_request import Job

    cases: dict[tuple[str, str], Case] = {}
    bare_poll = functools.partial(clients["bare Flask"].get, "/poll")
    cases["poll, pending job", "bare Flask"] = _repeat(bare_poll)
    cases["poll, finished job", "bare Flask"] = _repeat(bare_poll)
    for system, module in (("peer", peer), ("peer-db", peer_db)):
        done = str(uuid.uuid4())
        module.celery_app.backend.store_result(done, {"ok": True}, "SUCCESS")
        for operation, task_id in (("poll, pending job", str(uuid.uuid4())),
                                   ("poll, finished job", done)):  # fmt: skip
            poll = functools.partial(clients[system].get, f"/result/{task_id}")
            cases[operation, system] = _repeat(poll, module.celery_app)
    far.celery_app.set_current()
    with far.app.app_context():
        pending, finished = Job.create_and_enqueue(far.Noop), Job.create_and_enqueue(far.Noop)
        far.db.session.execute(
            far.db.text("UPDATE async_request_jobs SET status='processed', status_code=200,"
                        " response='{\"ok\": true}' WHERE id = :id"),
            {"id": finished.id},
        )  # fmt: skip
        far.db.session.commit()
        tokens = {"poll, pending job": pending.token, "poll, finished job": finished.token}
    for operation, token in tokens.items():
        poll = functools.partial(
            clients["flask-async-request"].get,
            "/async_request/job",
            headers={"X-JOB-AUTHORIZATION": token},
        )
        cases[operation, "flask-async-request"] = _repeat(poll, far.celery_app)
    return cases


def _jobs() -> dict[tuple[str, str], Case]:
    """The worker's job cases: what a worker process runs for one message of each system."""
    from bench import far, peer, peer_db
    from flask_async_request import Job
    from flask_async_request.broker import PROCESS_TASK

    run_far = _tracer(far.celery_app, PROCESS_TASK)
    broker = redis.Redis.from_url(REDIS_URL)

    def far_jobs(ops: int) -> tuple[float, float]:
        far.celery_app.set_current()
        with far.app.app_context():
            ids = [Job.create_and_enqueue(far.Noop).id for _ in range(ops)]
        # Their messages are not consumed: the jobs are run here, by id.
        broker.delete(FAR_QUEUE)
        return _measure((functools.partial(run_far, job_id) for job_id in ids), ops)

    def peer_jobs(celery_app: Celery, run: Callable[[Any], Any], ops: int) -> tuple[float, float]:
        celery_app.set_current()
        in_pool_child = celery_app.conf.result_backend.startswith("db+")
        with _pool_child(celery_app) if in_pool_child else contextlib.nullcontext():
            return _measure(_forever(functools.partial(run, None)), ops)

    cases: dict[tuple[str, str], Case] = {("worker's job", "flask-async-request"): far_jobs}
    for system, module in (("peer", peer), ("peer-db", peer_db)):
        run_task = _tracer(module.celery_app, module.noop.name)
        cases["worker's job", system] = functools.partial(peer_jobs, module.celery_app, run_task)
    nothing = peer.celery_app.task(
        name="bench.inprocess.nothing", shared=False, ignore_result=True
    )(_nothing)
    run_nothing = _tracer(peer.celery_app, nothing.name)
    cases["worker's job", "bare Flask"] = functools.partial(peer_jobs, peer.celery_app, run_nothing)
    return cases


def _nothing() -> None:
    """A task that does nothing and stores nothing: Celery's own cost per task."""


#: The systems ``--instructions`` counts a worker's job of.
#: The systems whose worker's jobs ``--instructions`` counts.
COUNTED_JOBS = ("peer", "flask-async-request")


def _counted_jobs(system: str, ops: int, run: bool) -> None:
    """Set up ``ops`` worker's jobs of ``system``, 5 more run to warm up; run them if ``run``."""
    from bench import far, peer
    from flask_async_request import Job
    from flask_async_request.broker import PROCESS_TASK

    _reset()
    if system == "peer":
        run_peer = _tracer(peer.celery_app, peer.noop.name)
        peer.celery_app.set_current()
        calls = [functools.partial(run_peer, None) for _ in range(ops + 5)]
    else:
        with far.app.app_context():
            far.db.create_all()
        run_far = _tracer(far.celery_app, PROCESS_TASK)
        far.celery_app.set_current()
        with far.app.app_context():
            ids = [Job.create_and_enqueue(far.Noop).id for _ in range(ops + 5)]
        redis.Redis.from_url(REDIS_URL).delete(FAR_QUEUE)
        calls = [functools.partial(run_far, job_id) for job_id in ids]
    for call in calls[:5]:
        call()
    # What the set-up left is no job's: see bench/result_polls.py.
    gc.collect()
    gc.freeze()
    for call in calls[5:] if run else ():
        call()


def _job_instructions(system: str, ops: int, run: bool) -> int:
    """The instructions of a process that sets up ``ops`` jobs of ``system``, run if ``run``."""
    counted = ["--count-jobs", system, "--ops", str(ops)]
    return callgrind_instructions("bench.inprocess", *counted, *(["--run-counted"] if run else []))


def job_instructions(ops: int) -> None:
    """Print the instructions per worker's job of this library and of the peer, and their ratio."""
    per_job = {
        system: (_job_instructions(system, ops, True) - _job_instructions(system, ops, False)) / ops
        for system in COUNTED_JOBS
    }
    print(f"{OPERATIONS[-1]:<22} {'instructions':>12}")
    for system, count in per_job.items():
        print(f"{system:<22} {count:>12,.0f}")
    print(
        f"ratio, flask-async-request / peer: {per_job['flask-async-request'] / per_job['peer']:.3f}"
    )


def _median(values: list[float]) -> float:
    return statistics.median(values)


def _print_table(figures: dict[str, dict[str, dict[str, list[float]]]], rounds: int) -> None:
    """Median CPU / wall microseconds of each figure, and this library's CPU ratios."""
    print(f"Medians of {rounds} rounds, microseconds per operation: CPU / wall")
    width = 22
    print(f"{'operation':20}" + "".join(f"{name:>{width}}" for name in SYSTEMS)
          + f"{'CPU vs peer':>14}{'CPU vs bare':>14}")  # fmt: skip
    for operation in figures:
        cells, cpu = [], {}
        for system in SYSTEMS:
            found = figures[operation][system]
            cpu[system] = _median(found["cpu"])
            cells.append(f"{cpu[system]:,.0f} / {_median(found['wall']):,.0f}")
        ours = cpu["flask-async-request"]
        print(
            f"{operation:20}" + "".join(f"{cell:>{width}}" for cell in cells)
            + f"{ours / cpu['peer']:>14.2f}{ours / cpu['bare Flask']:>14.2f}"
        )  # fmt: skip


#: This library's submission through ``@asynchronous`` (``POST /submit-view``).
DECORATED = "flask-async-request, @asynchronous"
#: The systems whose submissions ``--instructions`` counts.
COUNTED_SUBMISSIONS = ("peer", "flask-async-request", DECORATED)


def _submissions(system: str, ops: int) -> None:
    """Make ``ops`` submissions of ``system`` (none for ``"none"``), after the same warm-up."""
    from bench import far

    _reset()
    cases = _cases(("submission",))
    decorated = functools.partial(far.app.test_client().post, "/submit-view")
    cases["submission", DECORATED] = _repeat(decorated, far.celery_app)
    for counted in COUNTED_SUBMISSIONS:
        cases["submission", counted](20)
    # What the set-up left is no submission's: the collections that follow scan what
    # the submissions allocate, not a heap whose full scans would fall on one or the other.
    gc.collect()
    gc.freeze()
    if system != "none":
        cases["submission", system](ops)


def _submission_instructions(system: str, ops: int) -> int:
    """The instructions a process making ``ops`` submissions of ``system`` executes."""
    return callgrind_instructions("bench.inprocess", "--submissions", system, "--ops", str(ops))


def submission_instructions(ops: int) -> None:
    """Print the instructions per submission of this library and of the peer, and their ratio."""
    baseline = _submission_instructions("none", ops)
    per_op = {
        system: (_submission_instructions(system, ops) - baseline) / ops
        for system in COUNTED_SUBMISSIONS
    }
    print(f"{'submission':<36} {'instructions':>12} {'vs peer':>8}")
    for system, count in per_op.items():
        print(f"{system:<36} {count:>12,.0f} {count / per_op['peer']:>8.3f}")
    print("target: flask-async-request <= 1.0x the peer")


def _save(path: Path, run: dict[str, Any]) -> None:
    """Add ``run`` to the runs kept in ``path``."""
    found = json.loads(path.read_text()) if path.exists() else {"runs": []}
    found["runs"].append(run)
    path.write_text(json.dumps(found, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--ops", type=int, default=300)
    parser.add_argument(
        "--profile",
        nargs="?",
        const="submission",
        choices=SHORT_NAMES,
        help="print cProfile's view (CPU time) of this library's operation instead",
    )
    parser.add_argument("--sort", default="cumulative", help="cProfile sort key with --profile")
    parser.add_argument(
        "--only",
        action="append",
        choices=SHORT_NAMES,
        help="time this operation only (repeatable); by default every one",
    )
    parser.add_argument("--json", type=Path, help="add the run's figures to this file")
    parser.add_argument("--label", default="flask-async-request", help="the run's name in --json")
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per submission and per worker's job under valgrind instead",
    )
    parser.add_argument(
        "--submissions", choices=[*COUNTED_SUBMISSIONS, "none"], help=argparse.SUPPRESS
    )
    parser.add_argument("--count-jobs", choices=COUNTED_JOBS, help=argparse.SUPPRESS)
    parser.add_argument("--run-counted", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not DATABASE_NAME.startswith("far_"):
        sys.exit("Error: BENCH_DATABASE_URL must name a far_* database, which is reset.")
    if args.submissions:
        _submissions(args.submissions, args.ops)
        return
    if args.count_jobs:
        _counted_jobs(args.count_jobs, args.ops, args.run_counted)
        return
    if args.instructions:
        counted = args.only or ["submission", "job"]
        if "submission" in counted:
            submission_instructions(args.ops)
        if "job" in counted:
            job_instructions(args.ops)
        return
    _reset()
    if args.profile:
        operation = SHORT_NAMES[args.profile]
        case = _cases((operation,))[operation, "flask-async-request"]
        global _profile
        _profile = cProfile.Profile(time.process_time)
        case(args.ops)
        pstats.Stats(_profile).sort_stats(args.sort).print_stats(40)
        return
    operations = tuple(SHORT_NAMES[name] for name in args.only or SHORT_NAMES)
    cases = _cases(operations)
    figures: dict[str, dict[str, dict[str, list[float]]]] = {
        operation: {system: {"cpu": [], "wall": []} for system in SYSTEMS}
        for operation in operations
    }
    order = list(cases)
    for round_ in range(args.rounds):
        # Each round starts one figure further, so no system always follows the same one.
        shift = round_ * (len(SYSTEMS) + 1) % len(order)
        for operation, system in order[shift:] + order[:shift]:
            cpu, wall = cases[operation, system](args.ops)
            figures[operation][system]["cpu"].append(cpu)
            figures[operation][system]["wall"].append(wall)
    _print_table(figures, args.rounds)
    if args.json:
        _save(
            args.json,
            {
                "label": args.label,
                "when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "python": platform.python_version(),
                "rounds": args.rounds,
                "ops": args.ops,
                "figures": figures,
            },
        )


if __name__ == "__main__":
    main()
