"""web: create_job's checks, idempotency, owner and publishing on commit; cancel_job."""

from __future__ import annotations

import gc
import logging
from collections import UserDict, UserList
from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, current_app
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import event
from sqlalchemy.orm import Session

from flask_async_request import AsyncRequest, EnqueueError, Job, JobStatus, web
from flask_async_request.broker import PROCESS_TASK
from flask_async_request.exceptions import (
    AsyncRequestError,
    IdempotencyConflict,
    InvalidCallbackUrl,
    InvalidIdempotencyKey,
    JobFinished,
    JobNotFound,
    JobStateError,
    UnstorableValue,
)
from flask_async_request.values import utcnow
from flask_async_request.web import (
    MAX_IDEMPOTENCY_KEY_LENGTH,
    cancel_job,
    check_callback_url,
    check_json,
    create_job,
    idempotency_scope,
    sign_token,
)
from tests import workers
from tests.conftest import INTERNALS, SECRET, AppFactory, add_job, poll, reload_job

BROKER_DOWN = {
    "broker_url": "redis://127.0.0.1:1/0",
    "broker_connection_retry": False,
    "broker_connection_max_retries": 0,
    "broker_transport_options": {"max_retries": 0},
}


def _db(app: Flask) -> SQLAlchemy:
    db: SQLAlchemy = app.extensions["sqlalchemy"]
    return db


def _count(app: Flask) -> int:
    return _db(app).session.query(Job).count()


@pytest.fixture
def sent(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, dict[str, Any]]]:
    """Record the messages published, instead of running them."""
    messages: list[tuple[int, dict[str, Any]]] = []
    task = app.extensions["celery"].tasks[PROCESS_TASK]
    monkeypatch.setattr(
        task, "apply_async", lambda args, **options: messages.append((args[0], options))
    )
    return messages


class Identified:
    """An app whose identity loader answers ``name``, and its extension."""

    def __init__(self, app: Flask, extension: AsyncRequest) -> None:
        self.app = app
        self.extension = extension
        self.name: str | None = "alice"
        extension.identity_loader(self.identity)

    def identity(self) -> str | None:
        return self.name


@pytest.fixture
def identified(tmp_path: Path) -> Iterator[Identified]:
    """An app on SQLite with eager Celery and an identity loader, inside an app context."""
    app = Flask(__name__)
    app.config.update(
        TESTING=True,
        SECRET_KEY=SECRET,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/identified.db",
        CELERY={"task_always_eager": True},
    )
    db = SQLAlchemy(app)
    extension = AsyncRequest(app)
    with app.app_context():
        db.create_all()
        yield Identified(app, extension)
        db.session.remove()
        db.engine.dispose()


# check_json -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        0,
        -(2**70),
        1.5,
        "",
        "text with \x00 NUL",
        [],
        {},
        (1, "a"),
        {"a": [{"b": None}]},
    ],
)
def test_check_json_accepts_what_json_stores(value: Any) -> None:
    """None, bools, ints, finite floats, str (NUL too), lists, tuples and str-keyed dicts pass."""
    check_json(value)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (object(), TypeError, r"args is <object"),
        ({1, 2}, TypeError, "of type set"),
        (b"bytes", TypeError, "of type bytes"),
        (bytearray(b"x"), TypeError, "of type bytearray"),
        ({1: "a"}, TypeError, "dict key 1 of type int"),
        (float("nan"), ValueError, "JSON cannot store"),
        ([[1, [float("-inf")]]], ValueError, r"args\[0\]\[1\]\[0\]"),
        ({"k": {"deep": b""}}, TypeError, r"args\['k'\]\['deep'\]"),
        (range(3), TypeError, r"args is range\(0, 3\) of type range"),
        ([MappingProxyType({"a": 1})], TypeError, r"args\[0\] is .* of type mappingproxy"),
        ({"k": UserList([1])}, TypeError, r"args\['k'\] is .* of type UserList"),
        (UserDict({"a": 1}), TypeError, "of type UserDict"),
        ("\ud800", UnstorableValue, "lone surrogate"),
        ({"\udcff": 1}, UnstorableValue, "args key"),
    ],
)
def test_check_json_names_the_first_value_json_cannot_store(
    value: Any, error: type[Exception], message: str
) -> None:
    """Each refusal is its own error type, naming where the value is."""
    with pytest.raises(error, match=message):
        check_json(value, "args")


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((object(),), {}, TypeError, r"args\[0\] is <object"),
        (({1, 2},), {}, TypeError, "of type set"),
        ((b"bytes",), {}, TypeError, "of type bytes"),
        (({1: "a"},), {}, TypeError, "dict key 1 of type int"),
        ((float("nan"),), {}, ValueError, "JSON cannot store"),
        ((), {"when": __import__("datetime").date(2026, 1, 1)}, TypeError, r"kwargs\['when'\]"),
        (([[1, [float("inf")]]],), {}, ValueError, r"args\[0\]\[0\]\[1\]\[0\]"),
    ],
)
def test_unserialisable_arguments_leave_no_row(
    app: Flask, args: tuple[Any, ...], kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    """Arguments JSON cannot store raise and store nothing."""
    with pytest.raises(error, match=message):
        create_job(workers.Echo, args, kwargs)
    assert _count(app) == 0


def test_an_argument_only_json_s_own_types_hold_is_named(app: Flask) -> None:
    """A sequence or mapping that json.dumps refuses is the library's error, naming where it is."""
    with pytest.raises(TypeError, match=r"kwargs\['ids'\] is range\(0, 2\)"):
        create_job(workers.Echo, [], {"ids": range(2)})
    assert _count(app) == 0


def test_arguments_are_stored_as_json_gives_them_back(app: Flask, sent: list[Any]) -> None:
    """A tuple is stored as a list, and the kwargs as a dict: what the worker will get."""
    job = create_job(workers.Echo, ((1, 2), "x"), {"k": (3,)})
    assert reload_job(job.id).params == {"args": [[1, 2], "x"], "kwargs": {"k": [3]}}


# check_callback_url ----------------------------------------------------------------------


def _url_of_length(length: int) -> str:
    base = "https://hooks.example.com/"
    return base + "x" * (length - len(base))


def test_a_callback_url_may_be_2048_chars_long() -> None:
    """The column's length is accepted; one more char is not."""
    check_callback_url(_url_of_length(2048))
    with pytest.raises(InvalidCallbackUrl, match="2,048 chars at most"):
        check_callback_url(_url_of_length(2049))


@pytest.mark.parametrize(
    "url",
    [
        "ftp://x/y",
        "not a url",
        "/relative",
        "http://",
        "https://hooks.example.com/\x00",
        "https://hooks.example.com/\ud800",
        42,
        None,
    ],
)
def test_a_callback_url_that_cannot_be_a_callback_is_refused(url: Any) -> None:
    """Only absolute http(s) urls the table can store; InvalidCallbackUrl is a ValueError."""
    with pytest.raises(InvalidCallbackUrl) as info:
        check_callback_url(url)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("url", ["ftp://x/y", "not a url", "/relative", "http://"])
def test_bad_callback_url_stores_nothing(app: Flask, url: str) -> None:
    """create_job checks the url before anything is stored."""
    with pytest.raises(ValueError, match="callback_url"):
        create_job(workers.Echo, [], {}, callback_url=url)
    assert _count(app) == 0


# Tokens ---------------------------------------------------------------------------------


def test_sign_token_needs_a_stored_job(app: Flask) -> None:
    """A job with no id yet has no token."""
    job = Job(worker="tests.workers:Echo", params={"args": [], "kwargs": {}})
    with pytest.raises(ValueError, match="no id yet"):
        sign_token(job, INTERNALS.sign_token(current_app))


@pytest.mark.parametrize("commit", [True, False])
def test_a_new_job_holds_its_token_signed_where_it_was_created(
    app: Flask, monkeypatch: pytest.MonkeyPatch, commit: bool
) -> None:
    """create_job signs the token itself: the job never asks the extension for one."""

    def refuse(self: Any, job: Job) -> str:
        raise AssertionError("a new job's token was signed on first use")

    monkeypatch.setattr(AsyncRequest, "sign_token", refuse)
    job = create_job(workers.Echo, [1], {}, commit=commit)
    claims = INTERNALS.verify_token(current_app)(job.token)
    assert (claims.job_id, claims.uid) == (job.id, job.uid)


def test_a_new_job_s_token_polls_it(app: Flask, sent: list[Any]) -> None:
    """The token of a job just stored is accepted by the status endpoint: 202, waiting."""
    job = create_job(workers.Echo, [], {})
    answer = poll(app.test_client(), job.token)
    assert answer.status_code == 202
    assert answer.json is not None and answer.json["status"] == "waiting"


def test_a_new_job_is_the_stored_row_its_columns_read_on_first_access(
    pg_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job of one autocommitted INSERT is the session's persistent object of its row, as
    one loaded by id then expired: nothing to flush, every column but the id read on access."""
    monkeypatch.setattr(web, "publish", lambda message: None)
    session = _db(pg_app).session
    job = create_job(workers.Echo, [7], {})
    state = sa.inspect(job)
    assert state.persistent and job in session and not state.modified
    assert state.key == (Job, (job.id,), None)
    assert state.unloaded == {column.key for column in sa.inspect(Job).column_attrs} - {"id"}
    assert session.get(Job, job.id) is job
    assert (job.status, job.params) == (JobStatus.WAITING, {"args": [7], "kwargs": {}})
    # Nothing of the job's is written back: a commit leaves the row as it was stored.
    updated_at = job.updated_at
    session.commit()
    assert reload_job(job.id).updated_at == updated_at


# Idempotency ---------------------------------------------------------------------------


def test_same_key_returns_the_same_job(app: Flask) -> None:
    """A repeated key with the same arguments returns the job it first created."""
    first = create_job(workers.Echo, [1], {}, idempotency_key="order-7")
    again = create_job(workers.Echo, [1], {}, idempotency_key="order-7")
    assert again.id == first.id
    assert _count(app) == 1


def test_a_repeated_key_sends_no_second_message(app: Flask, sent: list[Any]) -> None:
    """The job a key returns again is not published again, and its token polls it."""
    first = create_job(workers.Echo, [1], {}, idempotency_key="order-7")
    again = create_job(workers.Echo, [1], {}, idempotency_key="order-7")
    assert [message[0] for message in sent] == [first.id]
    assert poll(app.test_client(), again.token).status_code == 202


def test_same_key_other_arguments_is_a_conflict(app: Flask) -> None:
    """A repeated key with other arguments raises IdempotencyConflict and stores nothing."""
    first = create_job(workers.Echo, [1], {}, idempotency_key="order-7")
    with pytest.raises(IdempotencyConflict, match="'order-7' was used for job") as info:
        create_job(workers.Echo, [2], {}, idempotency_key="order-7")
    assert info.value.job_id == first.id
    assert _count(app) == 1


def test_same_key_other_worker_is_a_conflict(app: Flask, sent: list[Any]) -> None:
    """The same arguments for another worker class are another request."""
    create_job(workers.Echo, [], {}, idempotency_key="k")
    with pytest.raises(IdempotencyConflict):
        create_job(workers.Report, [], {}, idempotency_key="k")


def test_a_key_lost_to_a_concurrent_request_returns_its_job(
    app: Flask, sent: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two requests with one key at once: the one whose INSERT loses gets the winner's job."""
    winner = create_job(workers.Echo, [1], {}, idempotency_key="race")
    real = web._job_with_scope
    lookups = iter([None])

    def not_yet(session: Session, scope: str) -> Job | None:
        # The first lookup ran before the winner's commit: it saw nothing.
        return next(lookups, real(session, scope))

    monkeypatch.setattr(web, "_job_with_scope", not_yet)
    loser = create_job(workers.Echo, [1], {}, idempotency_key="race")
    assert loser.id == winner.id
    assert _count(app) == 1
    assert [message[0] for message in sent] == [winner.id]


def test_keys_are_per_identity(identified: Identified) -> None:
    """The same key from two identities makes two jobs."""
    alice = create_job(workers.Echo, [], {}, idempotency_key="k").id
    identified.name = "bob"
    bob = create_job(workers.Echo, [], {}, idempotency_key="k").id
    assert alice != bob


@pytest.mark.parametrize(
    "key", ["", "x" * (MAX_IDEMPOTENCY_KEY_LENGTH + 1), "a\x00b", "\udc80", 7, None, b"k"]
)
def test_bad_key_is_refused(key: Any) -> None:
    """An empty, overlong, NUL-holding, lone-surrogate or non-str key is InvalidIdempotencyKey."""
    with pytest.raises(InvalidIdempotencyKey, match="Idempotency-Key") as info:
        idempotency_scope(key, None)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("key", ["", "x" * 256])
def test_bad_key_stores_nothing(app: Flask, key: str) -> None:
    """create_job refuses a bad key before anything is stored."""
    with pytest.raises(InvalidIdempotencyKey, match="Idempotency-Key"):
        create_job(workers.Echo, [], {}, idempotency_key=key)
    assert _count(app) == 0


def test_idempotency_scope_is_a_hash_per_owner_and_key() -> None:
    """Same owner and key, same scope; another owner or key, another; the key is not kept."""
    key = "x" * MAX_IDEMPOTENCY_KEY_LENGTH
    scope = idempotency_scope(key, "alice")
    assert scope == idempotency_scope(key, "alice")
    assert len(scope) == 64 and int(scope, 16) >= 0
    others = {
        idempotency_scope(key, "bob"),
        idempotency_scope(key, None),
        idempotency_scope("y", "alice"),
    }
    assert scope not in others and len(others) == 3
    # The separator keeps owner and key apart: ("a", "bc") is not ("ab", "c").
    assert idempotency_scope("bc", "a") != idempotency_scope("c", "ab")


# Owner, queue and time limit -------------------------------------------------------------


def test_the_identity_is_stored_as_the_owner(identified: Identified) -> None:
    """The identity loader's answer is the new job's owner; no identity, no owner."""
    assert reload_job(create_job(workers.Echo, [], {}).id).owner == "alice"
    identified.name = None
    assert reload_job(create_job(workers.Echo, [], {}).id).owner is None


def test_an_identity_the_table_cannot_hold_stores_nothing(identified: Identified) -> None:
    """An overlong identity is UnstorableValue, whose message does not echo it."""
    identified.name = "secret-" + "x" * 300
    with pytest.raises(UnstorableValue, match="cannot be stored as the job's owner") as info:
        create_job(workers.Echo, [], {})
    assert "secret-" not in str(info.value)
    assert _count(identified.app) == 0


def test_a_worker_class_queue_beats_the_setting(make_app: AppFactory) -> None:
    """A worker's own queue is stored and used; others take ASYNC_REQUEST_QUEUE."""
    app = make_app(ASYNC_REQUEST_QUEUE="default-q")
    queues: list[str | None] = []
    with app.app_context():
        task = app.extensions["celery"].tasks[PROCESS_TASK]
        task.apply_async = lambda args, **options: queues.append(options.get("queue"))
        own = create_job(workers.Report, [], {})
        other = create_job(workers.Echo, [], {})
        assert (reload_job(own.id).queue, reload_job(other.id).queue) == (
            workers.REPORTS_QUEUE,
            "default-q",
        )
    assert queues == [workers.REPORTS_QUEUE, "default-q"]


def test_a_worker_class_time_limit_is_stored(app: Flask, sent: list[Any]) -> None:
    """The worker's time_limit is the job's; without one, the setting's (none by default)."""
    assert reload_job(create_job(workers.Forever, [], {}).id).time_limit == 1.5
    assert reload_job(create_job(workers.Echo, [], {}).id).time_limit is None


def test_an_overlong_queue_name_stores_nothing(app: Flask) -> None:
    """A queue name longer than its column is a ValueError before any row is stored."""
    with pytest.raises(ValueError, match=r"The queue name .* is 256 characters long"):
        create_job(workers.LongQueue, [], {})
    assert _count(app) == 0


# Publishing after commit -------------------------------------------------------------


def test_row_is_committed_before_the_message_is_published(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the message goes out, the row is already visible to another connection."""
    seen: list[Any] = []
    task = app.extensions["celery"].tasks[PROCESS_TASK]
    engine = _db(app).engine

    def spy(args: tuple[int], **options: Any) -> None:
        with engine.connect() as conn:
            seen.append(
                conn.exec_driver_sql(
                    "SELECT status FROM async_request_jobs WHERE id = ?", (args[0],)
                ).scalar()
            )

    monkeypatch.setattr(task, "apply_async", spy)
    create_job(workers.Echo, [], {})
    assert seen == ["waiting"]


def test_commit_false_publishes_on_the_callers_commit(app: Flask, sent: list[Any]) -> None:
    """With commit=False nothing is sent until the caller commits."""
    job = create_job(workers.Echo, [1], {}, commit=False)
    job_id = job.id
    assert sent == []
    _db(app).session.commit()
    assert [message[0] for message in sent] == [job_id]


def test_commit_false_rolled_back_is_never_published(app: Flask, sent: list[Any]) -> None:
    """A rolled back transaction leaves no row and sends no message."""
    create_job(workers.Echo, [], {}, commit=False)
    session = _db(app).session
    session.rollback()
    session.commit()
    assert sent == []
    assert session.query(Job).count() == 0


def test_a_caller_s_pending_work_is_committed_with_the_job(app: Flask, sent: list[Any]) -> None:
    """create_job's commit carries the caller's own pending rows along."""
    session = _db(app).session
    mine = Job(worker="tests.workers:Echo", params={"args": ["mine"], "kwargs": {}})
    session.add(mine)
    create_job(workers.Echo, [], {})
    session.rollback()
    assert _count(app) == 2


def test_begin_block_publishes_when_it_commits(app: Flask, sent: list[Any]) -> None:
    """Inside db.session.begin() the job waits for the block's commit."""
    session = _db(app).session
    session.commit()
    with session.begin():
        job_id = create_job(workers.Echo, [], {}).id
        assert sent == []
    assert [message[0] for message in sent] == [job_id]


def test_begin_block_rolled_back_publishes_nothing(app: Flask, sent: list[Any]) -> None:
    """An exception in the block rolls the job back and nothing is sent."""
    session = _db(app).session
    session.commit()
    with pytest.raises(RuntimeError), session.begin():
        create_job(workers.Echo, [], {})
        raise RuntimeError("abort")
    assert sent == []
    assert session.query(Job).count() == 0


def test_publish_failure_after_commit_is_logged(
    make_app: AppFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker down at the caller's commit loses nothing: the row stays waiting, it is logged."""
    app = make_app(CELERY=BROKER_DOWN)
    with app.app_context(), caplog.at_level(logging.ERROR, logger="flask_async_request"):
        job_id = create_job(workers.Echo, [], {}, commit=False).id
        _db(app).session.commit()
        assert reload_job(job_id).status is JobStatus.WAITING
    assert f"Job {job_id} is stored but could not be published yet" in caplog.text


def test_enqueue_error_holds_the_stored_job(make_app: AppFactory) -> None:
    """create_job's EnqueueError names the job and holds it, token signed."""
    app = make_app(CELERY=BROKER_DOWN)
    with app.app_context():
        with pytest.raises(EnqueueError) as info:
            create_job(workers.Echo, ["late"], {})
        job = info.value.job
        assert isinstance(job, Job)
        assert job.id == info.value.job_id
        assert reload_job(job.id).status is JobStatus.WAITING
        assert poll(app.test_client(), job.token).status_code == 202


def test_listeners_stay_on_the_apps_own_session(make_app: AppFactory) -> None:
    """Another session in the process carries none of the library's listeners."""
    make_app()
    assert not event.contains(Session, "after_commit", web._publish_on_commit)
    other = Session(sa.create_engine("sqlite://"))
    other.info[web._PENDING_KEY] = [(1, "x")]
    other.commit()
    assert web._PENDING_KEY in other.info


def test_listening_twice_publishes_once(app: Flask, sent: list[Any]) -> None:
    """listen() on a session that already listens adds nothing: one message per job."""
    web.listen(_db(app).session)
    job_id = create_job(workers.Echo, [], {}, commit=False).id
    _db(app).session.commit()
    assert [message[0] for message in sent] == [job_id]


def test_every_new_app_publishes_on_commit(tmp_path: Path) -> None:
    """Apps made and dropped one after another each get their listeners (no stale registry)."""
    for n in range(150):
        app = Flask(__name__)
        app.config.update(
            SECRET_KEY="k" * 32,
            SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/app{n}.db",
            CELERY={"task_always_eager": True},
        )
        db = SQLAlchemy(app)
        AsyncRequest(app)
        with app.app_context():
            db.create_all()
            messages: list[int] = []
            task = app.extensions["celery"].tasks[PROCESS_TASK]
            task.apply_async = lambda args, _sent=messages, **options: _sent.append(args[0])
            job_id = create_job(workers.Echo, [], {}, commit=False).id
            db.session.commit()
            assert messages == [job_id], f"app {n} published nothing on commit"
            db.session.remove()
            db.engine.dispose()
        del app, db
        gc.collect()


# cancel_job --------------------------------------------------------------------------


def test_cancel_ends_a_waiting_job_that_then_never_runs(app: Flask, sent: list[Any]) -> None:
    """A cancelled job is cancelled (499) at once, and a late message runs nothing."""
    job = create_job(workers.Echo, [], {})
    reply = cancel_job(job.id)
    assert (reply.status, reply.status_code) == (JobStatus.CANCELLED, 499)
    app.extensions["celery"].tasks[PROCESS_TASK].run(job.id)
    stored = reload_job(job.id)
    assert stored.status is JobStatus.CANCELLED
    assert stored.response == reply.response


def test_cancel_errors_narrow(app: Flask) -> None:
    """A missing job is JobNotFound (a LookupError); a finished one JobFinished."""
    with pytest.raises(JobNotFound) as missing:
        cancel_job(12345)
    assert isinstance(missing.value, LookupError)
    assert isinstance(missing.value, AsyncRequestError)
    assert missing.value.job_id == 12345
    done = add_job(status=JobStatus.PROCESSED, response="x", finished_at=utcnow())
    with pytest.raises(JobFinished) as finished:
        cancel_job(done.id)
    assert isinstance(finished.value, JobStateError)
    assert finished.value.status == "processed"
    assert reload_job(done.id).response == "x"
