"""The benchmark's results page, from ``templates/page.rst``.

Renders the figures of ``results.json`` (their ratios and table are ``bench.figures``'),
with why a target can be missed, the long-poll section from ``templates/long_polls.rst``
and ``longpoll.json``, and the in-process CPU section from ``templates/in_process.rst`` and
``inprocess.json``. The chart is ``bench.chart``'s.
"""

from __future__ import annotations

import json
import statistics
import string
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.figures import TARGETS, met, ratio_spreads, render
from bench.harness import GUNICORN, HERE
from bench.scenarios import LONG_WAIT, WARM_UP_JOBS
from bench.sse_polls import section as polls_section

TEMPLATES = HERE / "templates"


# --- the page --------------------------------------------------------------------------------


def template(name: str) -> string.Template:
    """The page template ``templates/<name>.rst``; its ``$name`` fields are filled in."""
    return string.Template((TEMPLATES / f"{name}.rst").read_text())


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
        " PostgreSQL's work on them (the claim is a HOT update, which writes no index"
        " entry; the reply sets finished_at, which partial indexes depend on, so it writes"
        " an entry into every index whose WHERE it meets)."
    ),
    "web_rss_vs_peer_max": (
        "A web process of flask-async-request loads Flask-SQLAlchemy, SQLAlchemy's ORM, the"
        " psycopg driver and a JWT library besides Celery, and keeps a pool of database"
        " connections; once a client long-polls it also runs a listener thread on a"
        " connection of its own. The peer's web process loads Celery and its Redis client."
        " Measured by importing them in turn in the benchmark's venv: Flask, Celery and"
        " Redis take a process to 47 MB; SQLAlchemy's ORM with Flask-SQLAlchemy add 17 MB,"
        " psycopg 10 MB, PyJWT 1 MB, this library 9 MB (4 MB of it SQLAlchemy's MySQL,"
        " PostgreSQL and SQLite dialects, which it loads) and the app 2 MB. The SQL stack"
        " is most of the difference; peer-db carries it too, and its web process is about"
        " 4 MB below flask-async-request's."
    ),
    "worker_rss_vs_peer_max": (
        "Each process of a flask-async-request worker loads the Flask app with"
        " Flask-SQLAlchemy, SQLAlchemy's ORM and psycopg, and each pool child opens a"
        " connection pool of its own; the peer's worker loads Celery and its Redis client."
        " As for the web process, SQLAlchemy's ORM and psycopg are 27 MB of each of the"
        " three processes, and peer-db's worker carries them too; each of its processes is"
        " about 4 MB below flask-async-request's."
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
    return template("page").substitute(
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
        burst=f"{results['burst']:,}",
        rows=f"{results['rows']:,}",
        when=results["when"],
        runs_text=f"{count} runs" if several else "one run",
        reading=reading(count),
        analysis=analysis(results),
        long_polls=long_polls(HERE / "longpoll.json"),
        streams=streams(HERE / "sse.json", HERE / "sse10k.json"),
        in_process=in_process(HERE / "inprocess.json"),
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
    return template("long_polls").substitute(
        when=found["when"], python=found["python"], runs=runs, table=render(rows)
    )


def streams(path: Path, larger: Path | None = None) -> str:
    """The section of ``bench.sse``'s last runs, as ``--json`` wrote them.

    ``larger``: the runs of more streams, shown in a column of their own.
    """
    if not path.exists():
        return ""
    found = json.loads(path.read_text())
    columns = [found["runs"]]
    if larger is not None and larger.exists():
        columns.append(json.loads(larger.read_text())["runs"])

    def spread(pick: Callable[[dict[str, Any]], float], digits: int = 0) -> list[str]:
        cells = []
        for runs in columns:
            values = [pick(run) for run in runs]
            middle = statistics.median(values)
            cells.append(
                f"{middle:,.{digits}f} ({min(values):,.{digits}f} - {max(values):,.{digits}f})"
            )
        return cells

    def ratio(
        mine: Callable[[dict[str, Any]], float], floor: Callable[[dict[str, Any]], float]
    ) -> list[str]:
        return spread(lambda run: mine(run) / floor(run), 2)

    heads = [
        f"{runs[0]['streams']:,} streams, {len(runs)} run{'s' if len(runs) > 1 else ''}:"
        " median (min - max)"
        for runs in columns
    ]
    rows = [
        ["figure", *heads],
        ["jobs, each followed by as many streams", *spread(lambda r: r["jobs"])],
        ["progress events written to the streams", *spread(lambda r: r["progress_expected"])],
        ["progress events delivered", *spread(lambda r: r["progress_ms"]["count"])],
        ["progress delivered, p50 (ms)", *spread(lambda r: r["progress_ms"]["p50"])],
        ["progress delivered, p99 (ms)", *spread(lambda r: r["progress_ms"]["p99"])],
        ["floor: progress, p50 (ms)", *spread(lambda r: r["floor"]["progress_ms"]["p50"])],
        ["floor: progress, p99 (ms)", *spread(lambda r: r["floor"]["progress_ms"]["p99"])],
        [
            "progress p99 over the floor's",
            *ratio(lambda r: r["progress_ms"]["p99"], lambda r: r["floor"]["progress_ms"]["p99"]),
        ],
        ["end delivered, p50 (ms)", *spread(lambda r: r["end_ms"]["p50"])],
        ["end delivered, p99 (ms)", *spread(lambda r: r["end_ms"]["p99"])],
        ["floor: end, p99 (ms)", *spread(lambda r: r["floor"]["end_ms"]["p99"])],
        [
            "end p99 over the floor's",
            *ratio(lambda r: r["end_ms"]["p99"], lambda r: r["floor"]["end_ms"]["p99"]),
        ],
        ["5xx answers", *spread(lambda r: r["server_errors"])],
        ["database connections of the web process", *spread(lambda r: r["database_connections"])],
        ["web process RSS with the streams open (MB)", *spread(lambda r: r["rss_kb"] / 1024)],
        ["plain polls before the streams, p99 (ms)", *spread(lambda r: r["plain_alone_p99_ms"], 1)],
        [
            "plain polls beside the streams, p99 (ms)",
            *spread(lambda r: r["plain_beside_p99_ms"], 1),
        ],
    ]
    first = found["runs"][0]
    seconds = first["progress_expected"] // first["streams"]
    growth = ""
    if len(columns) > 1:
        # What more streams cost the process, beyond what it holds anyway.
        small, large = (statistics.median(r["rss_kb"] for r in runs) for runs in columns)
        streams_added = columns[1][0]["streams"] - first["streams"]
        growth = (
            f"\nFrom {first['streams']:,} to {columns[1][0]['streams']:,} streams the web process"
            f" grows by {(large - small) / 1024 / streams_added * 1000:.0f} MB per 1,000 streams."
        )
    return template("streams").substitute(
        when=found["when"],
        python=found["python"],
        runs=len(found["runs"]),
        streams=f"{first['streams']:,}",
        count=first["streams"],
        jobs=first["jobs"],
        per_job=first["streams"] // first["jobs"],
        seconds=seconds,
        rate=f"{first['streams']:,}",
        ratio=f"{first['streams'] // first['jobs']:,}",
        table=render(rows),
        growth=growth,
        polling=polls_section(path.parent / "sse_polls.json"),
    )


#: The in-process targets: flask-async-request's CPU per operation over another system's.
IN_PROCESS_TARGETS = {
    "submission": ("peer", 1.0),
    "poll, finished job": ("bare Flask", 2.0),
    "worker's job": ("peer", 1.0),
}


def in_process(path: Path) -> str:
    """The section of ``bench.inprocess``'s runs, as ``--json`` kept them, by label."""
    if not path.exists():
        return ""
    found = json.loads(path.read_text())
    runs = found["runs"]
    labels = list(dict.fromkeys(run["label"] for run in runs))
    operations = [op for op in runs[0]["figures"] if op in IN_PROCESS_TARGETS]

    def medians(op: str, system: str, label: str | None, kind: str) -> list[float]:
        """Each run's median of ``kind`` (cpu, wall), of the runs under ``label`` (None: all)."""
        return [
            statistics.median(run["figures"][op][system][kind])
            for run in runs
            if label is None or run["label"] == label
        ]

    def cell(op: str, system: str, label: str | None = None) -> str:
        cpu = statistics.median(medians(op, system, label, "cpu"))
        wall = statistics.median(medians(op, system, label, "wall"))
        return f"{cpu:,.0f} / {wall:,.0f}"

    def ratio(op: str, label: str) -> float:
        other, _ = IN_PROCESS_TARGETS[op]
        ours = medians(op, "flask-async-request", label, "cpu")
        theirs = medians(op, other, label, "cpu")
        return statistics.median(a / b for a, b in zip(ours, theirs, strict=True))

    rows = [
        [
            "CPU / wall per operation (us)",
            "bare Flask",
            "peer",
            "peer-db",
            *(f"flask-async-request, {label}" for label in labels),
            f"CPU ratio, {' -> '.join(labels)}",
            "target",
            "met",
        ]
    ]
    for op in operations:
        other, target = IN_PROCESS_TARGETS[op]
        ratios = [ratio(op, label) for label in labels]
        rows.append(
            [
                op,
                *(cell(op, system) for system in ("bare Flask", "peer", "peer-db")),
                *(cell(op, "flask-async-request", label) for label in labels),
                " -> ".join(f"{r:.2f}" for r in ratios),
                f"CPU <= {target:g}x {other}",
                "yes" if ratios[-1] <= target else "NO",
            ]
        )
    first = runs[0]
    return template("in_process").substitute(
        when=runs[-1]["when"],
        python=first["python"],
        count=len(runs),
        per_label=len(runs) // len(labels),
        rounds=first["rounds"],
        ops=first["ops"],
        table=render(rows),
    )
