"""The benchmark's chart: four panels of the systems' figures, written as a PNG by matplotlib."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.figures import LABELS, spread, web_mb, worker_mb
from bench.harness import MODULES, SYSTEMS
from bench.scenarios import LONG_WAIT


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
