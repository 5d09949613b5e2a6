"""The example page in a real browser: start a report, watch the bar, see the result; cancel."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser


def _bar(page: Any) -> float:
    return float(page.eval_on_selector("#bar", "bar => bar.value"))


def test_progress_bar_moves_and_the_result_appears(
    page: Any, served_example: str, tmp_path: Path
) -> None:
    """Click Start: the bar fills in steps as the worker reports, then the report shows."""
    page.goto(served_example)
    page.fill("#limit", "300000000")
    page.click("#start")
    values = []
    deadline = time.monotonic() + 60
    while not page.text_content("#result"):
        assert time.monotonic() < deadline, page.text_content("#status")
        values.append(_bar(page))
        time.sleep(0.05)
    page.screenshot(path=str(tmp_path / "done.png"))
    moving = sorted({v for v in values if 0 < v < 1})
    assert len(moving) >= 2, f"the bar did not move in steps: {sorted(set(values))}"
    assert values == sorted(values), "the bar went backwards"
    assert page.text_content("#status") == "Done."
    assert _bar(page) == 1
    report = json.loads(page.text_content("#result"))
    assert report["primes"] == 16252325


def test_cancel_button_stops_the_job(page: Any, served_example: str) -> None:
    """Click Cancel while the job runs: the page says cancelled and no result comes."""
    page.goto(served_example)
    page.fill("#limit", "500000000")
    page.click("#start")
    page.wait_for_function("document.getElementById('bar').value > 0", timeout=30_000)
    assert page.is_enabled("#cancel")
    page.click("#cancel")
    page.wait_for_function(
        "document.getElementById('status').textContent === 'Cancelled.'", timeout=15_000
    )
    assert _bar(page) < 1
    assert page.text_content("#result") == ""
    assert page.is_enabled("#start")


def test_the_bar_moves_by_pushed_events_with_no_polls(page: Any, served_example: str) -> None:
    """The page follows the job's event stream: every report moves the bar, and nothing polls."""
    requests: list[dict[str, str]] = []
    page.on(
        "request",
        lambda request: (
            requests.append(request.headers) if "/async_request/job" in request.url else None
        ),
    )
    page.goto(served_example)
    page.fill("#limit", "300000000")
    page.click("#start")
    page.wait_for_function(
        "document.getElementById('status').textContent === 'Done.'", timeout=60_000
    )
    updates = int(page.eval_on_selector("#bar", "bar => bar.dataset.updates"))
    assert updates >= 3, f"only {updates} progress events arrived"
    accepts = [headers.get("accept", "") for headers in requests]
    assert accepts and all(accept == "text/event-stream" for accept in accepts), accepts
    # One stream for the whole job: no poll, no reconnection.
    assert len(accepts) == 1, accepts
