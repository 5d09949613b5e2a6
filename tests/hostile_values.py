"""Any value at any field a worker or a client hands the library: the job ends, or makes no row.

:func:`hand_over` gives one value to the library as one field, through the
public API and the status endpoint, and checks what the library promises on
every database: the job reaches ``processed`` or ``failed`` (or creation was
refused with a ``TypeError``/``ValueError`` and stored nothing), and no answer
carries SQL, a driver's name or a traceback. The unit tests run it on SQLite,
the integration tests on PostgreSQL and MariaDB.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from hypothesis import strategies as st

from flask_async_request import AsyncRequest, Job, JobStatus, lifecycle
from tests import workers
from tests.conftest import current_db, poll

#: What only a database's own error says; never in an answer.
DRIVER_TEXT = ("[SQL:", "psycopg", "pymysql", "sqlite3", "Background on this error", "Traceback")

#: Handed to a running worker, which gives them back as its reply, progress or error.
RUN_FIELDS = ("body", "status", "content_type", "progress", "error")
#: Given when the job is created.
CREATION_FIELDS = ("params", "owner", "callback_url", "idempotency_key")
FIELDS = RUN_FIELDS + CREATION_FIELDS

#: Each kind of text a database refuses, or a column cannot hold.
REFUSED_TEXT = [
    "line one\x00line two",
    "\x00",
    "half \ud800 a pair",
    "\udfff",
    "x" * 256,
    "x" * 2049,
    "\u00e9" * 40_000,
    "x" * 70_000,
]

#: Any str Python can hold, lone surrogates included (st.text() leaves them out).
any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=300)

values = st.one_of(
    st.sampled_from(REFUSED_TEXT),
    st.text(),
    any_text,
    st.builds(lambda path: f"http://example.com/{path}", any_text),
    st.binary(max_size=50),
    st.none(),
    st.integers(),
    st.lists(any_text, max_size=3),
)

_keys = itertools.count()


def hostile_app(app: Flask, extension: AsyncRequest) -> Flask:
    """Give ``app``, whose extension is ``extension``, the identity :func:`hand_over` sets."""
    app.config["HOSTILE_OWNER"] = None
    extension.identity_loader(lambda: app.config["HOSTILE_OWNER"])
    return app


def _job_count() -> int:
    session = current_db().session
    count = session.execute(sa.select(sa.func.count()).select_from(Job)).scalar_one()
    session.commit()
    return int(count)


def _create(field: str, value: Any) -> Job:
    if field in RUN_FIELDS:
        key = f"hostile-{next(_keys)}"
        workers.HOSTILE_VALUES[key] = value
        return Job.create_and_enqueue(workers.Hostile, field, key)
    if field == "params":
        return Job.create_and_enqueue(workers.Echo, value)
    if field == "owner":
        return Job.create_and_enqueue(workers.Echo)
    if field == "callback_url":
        return Job.create_and_enqueue(workers.Echo, callback_url=value)
    assert field == "idempotency_key"
    # A new job each time: the key is unique to this hand-over.
    return Job.create_and_enqueue(workers.Echo, next(_keys), idempotency_key=value)


def hand_over(app: Flask, field: str, value: Any) -> None:
    """Give ``value`` to the library as ``field``; check that the job ends and answers cleanly."""
    app.config["HOSTILE_OWNER"] = value if field == "owner" else None
    try:
        with pytest.MonkeyPatch.context() as patch, app.app_context():
            # A callback url may name any host: nothing is delivered.
            patch.setattr(lifecycle, "queue_callback", lambda job_id: None)
            before = _job_count()
            try:
                job = _create(field, value)
            except (TypeError, ValueError) as refused:
                assert _job_count() == before
                assert not any(text in str(refused) for text in DRIVER_TEXT), str(refused)
                return
            job_id, token = job.id, job.token
            session = current_db().session
            session.commit()
            status = session.execute(sa.select(Job.status).where(Job.id == job_id)).scalar_one()
            session.commit()
            assert JobStatus(status) in (JobStatus.PROCESSED, JobStatus.FAILED), status
        answer = poll(app.test_client(), token)
        assert answer.status_code == 200, answer.data[:300]
        assert answer.json["status"] == JobStatus(status).value
        response = answer.json["response"]
        if "href" in response:
            # A body of bytes (or chunks of them), or a text longer than the database's
            # text column (an echo of long arguments on MariaDB): in the result store,
            # downloaded whole.
            assert field in ("body", "params") and status == JobStatus.PROCESSED
            download = app.test_client().get(
                response["href"], headers={"X-JOB-AUTHORIZATION": f"Bearer {token}"}
            )
            assert download.status_code == 200
            assert len(download.data) == response["size"]
            return
        body = response["body"]
        if status == JobStatus.FAILED:
            message = json.loads(body)["error"]
            assert isinstance(message, str) and message
            assert not any(text in answer.text for text in DRIVER_TEXT), answer.text[:500]
        elif field == "body":
            # Stored as it was given.
            assert body == ("" if value is None else value)
    finally:
        app.config["HOSTILE_OWNER"] = None
        workers.HOSTILE_VALUES.clear()
