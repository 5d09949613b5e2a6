"""The example page in a real browser: start a report, watch the bar, see the result; cancel;
export the primes and download the ZIP."""

from __future__ import annotations

import io
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from example.app import export_filename, write_export

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


def test_export_downloads_the_workers_zip(page: Any, served_example: str, tmp_path: Path) -> None:
    """Click Download the ZIP: the browser saves the worker's exact bytes under its name,
    and the page's signed link downloads them again."""
    limit = 2_000_000
    expected = io.BytesIO()
    write_export(limit, expected)
    page.goto(served_example)
    page.fill("#export-limit", str(limit))
    with page.expect_download(timeout=60_000) as info:
        page.click("#export")
    download = info.value
    assert download.suggested_filename == export_filename(limit)
    saved = tmp_path / "saved.zip"
    download.save_as(saved)
    assert saved.read_bytes() == expected.getvalue()
    page.wait_for_selector("#export-link:not([hidden])", timeout=15_000)
    assert page.text_content("#export-status") == (
        f"Saved {export_filename(limit)} ({len(expected.getvalue()):,} bytes)."
    )
    assert page.eval_on_selector("#export-bar", "bar => bar.value") == 1
    href = page.get_attribute("#export-link", "href")
    assert href is not None and "/async_request/download/" in href
    page.screenshot(path=str(tmp_path / "exported.png"))

    with page.expect_download(timeout=30_000) as again:
        page.click("#export-link")
    assert again.value.suggested_filename == export_filename(limit)
    again.value.save_as(tmp_path / "again.zip")
    assert (tmp_path / "again.zip").read_bytes() == expected.getvalue()
    assert zipfile.ZipFile(tmp_path / "again.zip").namelist() == [
        "primes.csv",
        "twin_primes.csv",
        "gaps.csv",
        "summary.csv",
    ]


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
