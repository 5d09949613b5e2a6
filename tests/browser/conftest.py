"""Headless Chromium (Debian's) driven by Playwright, and the apps the browser tests serve."""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from tests.browser.client_app import Served, build
from tests.conftest import AppFactory, serving
from tests.dashboards import PREFIX, open_dashboard

CHROMIUM = os.environ.get("FAR_TEST_CHROMIUM", "/usr/bin/chromium")
# Flags that keep Chromium off the network and quiet in a sandboxed CI.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture
def page() -> Iterator[Any]:
    """A fresh headless Chromium page."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        if os.environ.get("CI"):
            pytest.fail(f"Chromium is not installed at {CHROMIUM}; .ci/run installs it.")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser.new_page()
        finally:
            browser.close()


@pytest.fixture
def extra_views() -> Callable[[Flask, Served], None] | None:
    """Views a test module adds to the client's test app (it overrides this fixture)."""
    return None


@pytest.fixture
def serve(
    make_app: AppFactory, extra_views: Callable[[Flask, Served], None] | None
) -> Iterator[Callable[..., Served]]:
    """Serve the client's test app (embedded worker, SQLite) on 127.0.0.1 with the given config."""
    servers: list[Any] = []

    def factory(**config: Any) -> Served:
        app = make_app(CELERY={}, **config)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        served = Served(f"http://127.0.0.1:{server.server_port}")
        build(app, served)
        if extra_views is not None:
            extra_views(app, served)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return served

    yield factory
    for server in servers:
        server.shutdown()


@pytest.fixture
def served(serve: Callable[..., Served]) -> Served:
    """The client's test app, served with the default config."""
    return serve()


@pytest.fixture
def dashboard_app(make_app: AppFactory) -> Flask:
    """An app (eager Celery) with the dashboard open, and jobs in each interesting state."""
    return open_dashboard(make_app)


@pytest.fixture
def dashboard_url(dashboard_app: Flask) -> Iterator[str]:
    """The dashboard app served on 127.0.0.1; yields the dashboard's url."""
    with serving(dashboard_app) as base:
        yield f"{base}{PREFIX}/"


def listed(page: Any) -> list[int]:
    """The ids of the jobs the dashboard's page lists, in its order."""
    return [
        int(row.get_attribute("data-job-id")) for row in page.query_selector_all("#jobs tbody tr")
    ]
