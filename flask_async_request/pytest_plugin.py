"""The pytest plugin: fixtures that run an app's jobs inline in its tests.

Installed with the package and loaded by pytest on its own (entry point
``pytest11``, name ``flask_async_request``; ``-p no:flask_async_request`` turns
it off). Its fixtures use the project's ``app`` fixture, the pytest-flask
convention; a project without one is not affected unless it asks for them.

.. code-block:: python

    def test_report(client, async_jobs):
        started = client.post("/reports", json={"month": 3})
        assert started.status_code == 202
        result = async_jobs.wait_for(started, client=client)
        assert result.ok
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from flask import Flask

    from .testing import JobRunner


@pytest.fixture
def async_jobs(app: Flask) -> Iterator[JobRunner]:
    """A :class:`~flask_async_request.testing.JobRunner` holding the ``app`` fixture's jobs.

    Views of the app answer 202 with their jobs waiting; the test runs them with
    ``async_jobs.run_pending()``, ``async_jobs.run(job)`` or
    ``async_jobs.wait_for(response)``. No broker and no worker are needed.
    """
    # Imported here, not at the top: pytest loads this plugin in every run of a
    # project that has the package installed, and the server stack is only
    # worth importing for the tests that ask for this fixture.
    from .testing import JobRunner

    with JobRunner(app) as runner:
        yield runner
