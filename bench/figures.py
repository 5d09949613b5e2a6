"""The benchmark's figures: ratios against the targets, their spread over runs, and the table.

Reads the raw figures of ``results.json`` (one entry per run). The page that shows
them is ``bench.report``'s, the chart ``bench.chart``'s.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

from bench.harness import MODULES, SYSTEMS
from bench.scenarios import LONG_WAIT

LABELS = {
    "bare": "bare Flask",
    "peer": "peer",
    "peer-db": "peer-db",
    "far": "flask-async-request",
}

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


def web_mb(run: dict[str, Any], name: str) -> float:
    """The web figure: the largest peak RSS among the system's gunicorn workers."""
    return float(max(run["rss_mb"]["web"][name]))


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
