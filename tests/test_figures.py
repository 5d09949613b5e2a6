"""The benchmark's figures: ratios against the targets, their spread, and the table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bench import figures

RESULTS = Path(__file__).resolve().parents[1] / "bench" / "results.json"


def _results() -> dict[str, Any]:
    found: dict[str, Any] = json.loads(RESULTS.read_text())
    return found


def test_a_spread_is_the_minimum_median_and_maximum() -> None:
    """Over an even count the median is the middle pair's mean."""
    assert figures.spread([3.0, 1.0, 4.0, 2.0]) == (1.0, 2.5, 4.0)


def test_a_max_target_is_an_upper_bound_and_the_others_lower_bounds() -> None:
    """``_max`` targets are met at or below, the others at or above."""
    assert figures.met("web_rss_vs_peer_max", 1.1)
    assert not figures.met("web_rss_vs_peer_max", 1.2)
    assert figures.met("poll_pending_vs_peer", 1.0)
    assert not figures.met("poll_pending_vs_peer", 0.9)


def test_the_memory_figures_read_the_largest_web_worker_and_the_whole_pool() -> None:
    """Web: the largest gunicorn worker; worker: the main process and its children summed."""
    run = {
        "rss_mb": {"web": {"far": [40, 55, 50]}, "worker": {"far": {"main": 30, "pool": [20, 21]}}}
    }
    assert figures.web_mb(run, "far") == 55.0
    assert figures.worker_mb(run, "far") == 71.0


def test_every_target_has_a_ratio_in_each_run() -> None:
    """The ratios of a stored run cover TARGETS, against either peer."""
    results = _results()
    for peer in ("peer", "peer-db"):
        spreads = figures.ratio_spreads(results, peer)
        assert set(spreads) == set(figures.TARGETS)
        assert all(low <= middle <= high for low, middle, high in spreads.values())


def test_the_table_has_a_column_per_system_and_renders_as_an_rst_table() -> None:
    """One header, rows as wide as it, and the rendered table ruled above and below."""
    rows = figures.table(_results())
    assert rows[0][0] == "figure"
    assert all(len(row) == len(rows[0]) for row in rows)
    lines = figures.render(rows).splitlines()
    assert lines[0] == lines[2] == lines[-1]
    assert set(lines[0]) == {"=", " "}
    assert len(lines) == len(rows) + 3


def test_the_streams_section_shows_each_figure_against_its_floor() -> None:
    """bench/sse.json's runs become the README's event-stream section, ratios to the floor in it."""
    from bench.harness import HERE
    from bench.report import streams

    section = streams(HERE / "sse.json")
    assert section.startswith("Event streams at scale\n")
    assert "progress p99 over the floor's" in section
    found = json.loads((HERE / "sse.json").read_text())
    assert f"``python -m bench.sse --streams {found['runs'][0]['streams']} " in section
    assert "$" not in section


def test_the_streams_section_tells_what_polling_would_cost() -> None:
    """bench/sse_polls.json's runs become the paragraph on polling beside the streams."""
    from bench.harness import HERE
    from bench.report import streams
    from bench.sse_polls import section

    found = json.loads((HERE / "sse_polls.json").read_text())
    paragraph = section(HERE / "sse_polls.json")
    assert paragraph.startswith("Measured beside polling: ``python -m bench.sse_polls")
    assert f"{found['runs'][0]['clients']:,} clients of {found['runs'][0]['jobs']} jobs" in (
        " ".join(paragraph.split())
    )
    assert paragraph in streams(HERE / "sse.json")
    assert section(HERE / "no such runs.json") == ""


def test_the_results_page_is_what_its_templates_and_figures_render() -> None:
    """``bench/README.rst`` is rewritten by ``bench/run.py`` from the templates and the
    JSON figures: text written into the page alone would be lost at the next run."""
    from bench.report import page

    written = (RESULTS.parent / "README.rst").read_text()
    assert page(_results(), figures.table(_results())) == written
