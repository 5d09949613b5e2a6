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

This module runs the benchmark: its options, its runs and what each run measures in turn.
``bench.harness`` starts and stops the servers and workers, resets the services, loads with
wrk and reads memory; ``bench.scenarios`` measures each figure; ``bench.report`` computes the
ratios and renders the table and the page, whose text is ``bench/templates/page.rst``;
``bench.chart`` draws the chart.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench import scenarios  # noqa: E402
from bench.chart import chart  # noqa: E402
from bench.figures import render, table  # noqa: E402
from bench.harness import (  # noqa: E402
    HERE,
    MODULES,
    PORTS,
    SYSTEMS,
    Turns,
    celery_worker,
    gunicorn,
    reset_broker,
    reset_database,
    rotated,
    server_versions,
    wait_port,
    web_rss,
)
from bench.report import page  # noqa: E402

#: The full benchmark, and the short one that checks the script works.
FULL = {"duration": 5, "samples": 100, "burst": 2000, "rows": 1_000_000, "runs": 3}
QUICK = {"duration": 2, "samples": 20, "burst": 200, "rows": 20_000, "runs": 1}


def run(args: argparse.Namespace, index: int, logs: Path) -> dict[str, Any]:
    """One full run of the benchmark; ``index`` rotates the order in which systems take turns."""
    started = time.monotonic()
    reset_database()
    reset_broker()
    order = rotated(SYSTEMS, index)
    results: dict[str, Any] = {"order": list(order)}
    load = {"seconds": args.duration, "connections": args.connections}
    turns = Turns(order)

    with contextlib.ExitStack() as stack:
        web = {name: stack.enter_context(gunicorn(name, logs)) for name in SYSTEMS}
        for port in PORTS.values():
            wait_port(port)

        print("  polls of a pending job ...")
        results["poll_pending"] = scenarios.poll_pending(turns, load)
        print("  submissions (no worker running) ...")
        results["submit"] = scenarios.submissions(turns, load)

        with contextlib.ExitStack() as workers, httpx.Client(timeout=30) as client:
            for name in MODULES:
                workers.enter_context(celery_worker(name, logs))
            print("  polls of a finished job ...")
            results["poll_finished"] = scenarios.poll_finished(turns, load, client)
            print(f"  end-to-end latency ({args.samples} jobs each, polling and long polling) ...")
            results["end_to_end"] = scenarios.end_to_end(args.samples, index)
        results["rss_mb"] = {"web": {name: web_rss(web[name]) for name in SYSTEMS}}

        print(f"  worker throughput (burst of {args.burst:,}) ...")
        bursts = scenarios.throughput(turns, args.burst, logs)
        results["throughput"] = {name: rate for name, (rate, _) in bursts.items()}
        results["rss_mb"]["worker"] = {name: rss for name, (_, rss) in bursts.items()}

        print("  poll latency by table size ...")
        results["poll_by_rows"] = scenarios.poll_by_rows(args.rows, load)

    print(f"  purge of {args.rows:,} finished rows ...")
    results["purge"] = scenarios.purge()
    results["seconds"] = time.monotonic() - started
    return results


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
