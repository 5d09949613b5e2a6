"""The operator's reads against a real `celery worker`: the workers seen and the queues' depths."""

from __future__ import annotations

import pytest

from flask_async_request import Job
from tests import workers
from tests.conftest import current_db
from tests.integration.conftest import Stack

pytestmark = pytest.mark.integration


def test_the_queue_view_reads_the_workers_and_depths(stack: Stack) -> None:
    """With a real worker: it is seen consuming its queue; waiting jobs are counted per queue."""
    from flask_async_request.maintenance import consumers
    from flask_async_request.reading import queue_depths

    app, _ = stack()
    with app.app_context():
        seen = consumers(timeout=5)
        assert seen is not None
        queue = app.config["ASYNC_REQUEST_QUEUE"]
        assert [name for name, queues in seen.items() if queue in queues]
        job_id = Job.create_and_enqueue(workers.Sleep, 0.01).id
        assert current_db().session.get(Job, job_id) is not None
        assert all(depth.waiting >= 0 for depth in queue_depths())
