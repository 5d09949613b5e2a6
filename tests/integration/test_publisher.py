"""The messages that run jobs, pushed straight to Redis: the same as Celery's own."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kombu.connection
import kombu.exceptions
import kombu.utils.functional
import pytest
import redis
import redis.connection
import redis.retry
from celery import Celery
from celery.signals import before_task_publish
from kombu.entity import Exchange, Queue

from flask_async_request.broker import PROCESS_TASK
from flask_async_request.publisher import RedisSender, sender_for
from tests.integration.conftest import free_port

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("FAR_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _celery(**conf: Any) -> Celery:
    app = Celery("publisher-test", broker=REDIS_URL, set_as_current=False)
    app.conf.update(conf)

    @app.task(name=PROCESS_TASK, shared=False, ignore_result=True)  # type: ignore[untyped-decorator]
    def process_job(job_id: int) -> None: ...

    return app


@pytest.fixture
def queue() -> Iterator[str]:
    name = f"far-test-publisher-{uuid.uuid4().hex[:8]}"
    yield name
    redis.Redis.from_url(REDIS_URL).delete(name)


def _pop(queue: str) -> dict[str, Any]:
    raw = redis.Redis.from_url(REDIS_URL).rpop(queue)
    assert raw is not None, f"nothing on {queue}"
    assert isinstance(raw, bytes)
    message: dict[str, Any] = json.loads(raw)
    message["body"] = json.loads(base64.b64decode(message["body"]))
    # Ids of the message itself, and of the process that sent it.
    for key in ("delivery_tag", "reply_to"):
        message["properties"].pop(key)
    message["headers"].pop("origin")
    return message


@pytest.mark.parametrize("time_limit", [None, 35.0])
def test_a_pushed_message_is_the_one_apply_async_sends(queue: str, time_limit: Any) -> None:
    """Body, headers and properties match apply_async's for the same job, time limit or not."""
    app = _celery()
    app.tasks[PROCESS_TASK].apply_async((42,), task_id="t-42", queue=queue, time_limit=time_limit)
    expected = _pop(queue)
    sender = sender_for(app, queue)
    assert isinstance(sender, RedisSender)
    sender.send(PROCESS_TASK, 42, "t-42", queue, time_limit)
    assert _pop(queue) == expected


def test_publish_signal_receivers_get_every_message(queue: str) -> None:
    """With a before_task_publish receiver connected, messages go through apply_async."""
    app = _celery()
    seen: list[str] = []

    def receiver(headers: dict[str, Any], **_: Any) -> None:
        seen.append(headers["id"])

    before_task_publish.connect(receiver)
    try:
        assert sender_for(app, queue) is None
    finally:
        before_task_publish.disconnect(receiver)
    assert sender_for(app, queue) is not None


@pytest.mark.parametrize(
    "conf",
    [
        {"task_serializer": "pickle", "accept_content": ["pickle"]},
        {"task_compression": "gzip"},
        {"task_always_eager": True},
        {"broker_url": "memory://localhost/"},
        {"task_routes": {PROCESS_TASK: {"queue": "elsewhere"}}},
        {"task_default_priority": 5},
        {"task_send_sent_event": True},
    ],
)
def test_other_message_shapes_use_apply_async(queue: str, conf: dict[str, Any]) -> None:
    """Anything that would make apply_async's message other than the template's."""
    assert sender_for(_celery(**conf), queue) is None


def test_a_queue_routed_through_a_topic_exchange_uses_apply_async(queue: str) -> None:
    """Only a queue that is the list of its own name is pushed to directly."""
    routed = Queue(queue, Exchange("media", type="topic"), routing_key="media.#")  # type: ignore[no-untyped-call]
    assert sender_for(_celery(task_queues=[routed]), queue) is None
    plain = Queue(queue, Exchange(queue, type="direct"), routing_key=queue)  # type: ignore[no-untyped-call]
    assert sender_for(_celery(task_queues=[plain]), queue) is not None
    expiring = Queue(queue, Exchange(queue, type="direct"), routing_key=queue, expires=60)  # type: ignore[no-untyped-call]
    assert sender_for(_celery(task_queues=[expiring]), queue) is None


def test_more_publishing_threads_than_connections_wait_their_turn(queue: str) -> None:
    """A pool of two connections serves 20 threads publishing at once, none refused."""
    sender = sender_for(_celery(broker_transport_options={"max_connections": 2}), queue)
    assert sender is not None
    errors: list[BaseException] = []
    start = threading.Barrier(20)

    def publish(n: int) -> None:
        start.wait()
        try:
            for i in range(10):
                sender.send(PROCESS_TASK, n * 100 + i, f"t-{n}-{i}", queue)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=publish, args=(n,)) for n in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assert redis.Redis.from_url(REDIS_URL).llen(queue) == 200


def test_a_connection_cut_while_idle_is_made_again(queue: str) -> None:
    """A push on a connection the server dropped is tried again on a new one, not lost."""
    sender = sender_for(_celery(), queue)
    assert sender is not None
    sender.send(PROCESS_TASK, 6, "t-6", queue)
    # The pool holds the one connection that pushed; the server drops it.
    client_id = sender._client.client_id()
    assert redis.Redis.from_url(REDIS_URL).client_kill_filter(_id=client_id) == 1
    sender.send(PROCESS_TASK, 7, "t-7", queue)
    assert [_pop(queue)["headers"]["id"] for _ in range(2)] == ["t-6", "t-7"]


def _pauses(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[float]:
    """The pauses ``module`` makes between attempts, recorded instead of slept."""
    pauses: list[float] = []
    monkeypatch.setattr(module, "sleep", pauses.append)
    return pauses


@pytest.mark.parametrize(
    "conf",
    [
        {},
        {"task_publish_retry_policy": {"max_retries": 5, "interval_step": 0.5, "interval_max": 2}},
    ],
    ids=["default policy", "own policy"],
)
def test_a_broker_that_is_down_is_given_up_on_as_apply_async_would(
    queue: str, conf: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connecting to a broker that is down retries as Celery's publish retry policy says.

    Not the worker's patient connection retries, which held each submission for
    seconds while the broker was down.
    """
    down = f"redis://127.0.0.1:{free_port()}/0"
    pauses = _pauses(monkeypatch, kombu.utils.functional)
    with pytest.raises(kombu.exceptions.OperationalError):
        _celery(broker_url=down, **conf).tasks[PROCESS_TASK].apply_async((1,), queue=queue)
    theirs = list(pauses)
    pauses.clear()
    with pytest.raises(kombu.exceptions.OperationalError):
        RedisSender(_celery(broker_url=down, **conf))
    assert pauses == theirs
    # Celery's default: 0.2 s, then 0.4 s. The own policy: 5 pauses of kombu's
    # default first interval (2 s, capped at 2), slept a second at a time.
    assert sum(theirs) == pytest.approx(0.6 if not conf else 10.0)


@pytest.mark.parametrize(
    ("conf", "paused"),
    [({}, 0.6), ({"task_publish_retry_policy": {"max_retries": 2}}, 2.0)],
    ids=["default policy", "own policy"],
)
def test_a_broker_gone_after_connecting_is_retried_as_the_policy_says(
    queue: str, monkeypatch: pytest.MonkeyPatch, conf: dict[str, Any], paused: float
) -> None:
    """Pushes retry as Celery's policy says, then fail.

    By default at once, then 0.2 and 0.4 s on; a policy that names no intervals
    pauses a second, as kombu's publish does.
    """
    sender = RedisSender(_celery(**conf))
    pool = sender._client.connection_pool
    pool.disconnect()
    pool.connection_kwargs["port"] = free_port()
    pauses = _pauses(monkeypatch, kombu.utils.functional)
    with pytest.raises(redis.ConnectionError):
        sender.send(PROCESS_TASK, 8, "t-8", queue)
    assert sum(pauses) == pytest.approx(paused)


def test_a_push_whose_connection_fails_is_sent_again(
    queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A push that fails on its way out is retried on a new connection, not lost."""
    sender = RedisSender(_celery())
    real: Callable[..., None] = redis.connection.Connection.send_packed_command
    sent: list[int] = []

    def flaky(connection: Any, command: Any, check_health: bool = True) -> None:
        sent.append(1)
        if len(sent) == 1:
            raise redis.ConnectionError("Connection reset by peer")
        real(connection, command, check_health)

    monkeypatch.setattr(redis.connection.Connection, "send_packed_command", flaky)
    sender.send(PROCESS_TASK, 9, "t-9", queue)
    monkeypatch.undo()
    # The failed push, then a new connection's handshake and the push again.
    assert len(sent) > 1
    assert _pop(queue)["headers"]["id"] == "t-9"


def test_first_senders_connect_side_by_side(queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two requests that find no sender yet each connect: neither waits out the other's retries."""
    celery_app = _celery()
    connecting: list[int] = []
    go_on = threading.Event()
    real: Callable[..., Any] = kombu.connection.Connection.ensure_connection

    def slow(connection: Any, *args: Any, **kwargs: Any) -> Any:
        connecting.append(1)
        assert go_on.wait(10)
        return real(connection, *args, **kwargs)

    monkeypatch.setattr(kombu.connection.Connection, "ensure_connection", slow)
    senders: list[Any] = []
    threads = [
        threading.Thread(target=lambda: senders.append(sender_for(celery_app, queue)))
        for _ in range(2)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 10
    while len(connecting) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    both = len(connecting)
    go_on.set()
    for thread in threads:
        thread.join(10)
    assert both == 2
    assert senders[0] is senders[1] is not None  # one of them is kept, for both


def test_with_publish_retries_off_a_down_broker_is_tried_once_more_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """task_publish_retry = False: one more try, for a connection cut while idle, and no pause."""
    down = _celery(broker_url=f"redis://127.0.0.1:{free_port()}/0", task_publish_retry=False)
    pauses = _pauses(monkeypatch, kombu.utils.functional)
    with pytest.raises(kombu.exceptions.OperationalError):
        RedisSender(down)
    assert pauses == []


def _fill_backlog(listener: socket.socket) -> list[socket.socket]:
    """Leave new connects to ``listener`` hanging, as to a host that drops packets.

    Its backlog shrunk to nothing and filled by connects it never accepts: on
    Linux the kernel then drops each new SYN, and the connect waits for its
    retries (over two minutes). The filling sockets are for the caller to close.
    """
    listener.listen(0)
    queued = [socket.socket() for _ in range(4)]
    for client in queued:
        client.setblocking(False)
        client.connect_ex(listener.getsockname())
    time.sleep(0.1)
    return queued


@pytest.fixture
def unreachable() -> Iterator[int]:
    """A port whose connects hang: a listener that never accepts, its backlog full."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        port = int(listener.getsockname()[1])
        queued = _fill_backlog(listener)
        try:
            yield port
        finally:
            for client in queued:
                client.close()


@pytest.fixture
def mute() -> Iterator[int]:
    """A port that accepts connections and never answers on them."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.settimeout(0.1)
        accepted: list[socket.socket] = []
        done = threading.Event()

        def accept() -> None:
            while not done.is_set():
                with contextlib.suppress(TimeoutError):
                    accepted.append(listener.accept()[0])

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            yield int(listener.getsockname()[1])
        finally:
            done.set()
            thread.join(5)
            for connection in accepted:
                connection.close()


@pytest.mark.timeout(60)
def test_a_broker_host_that_drops_packets_is_given_up_on_after_the_connection_timeout(
    unreachable: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each connect waits broker_connection_timeout, not the kernel's two minutes and more."""
    pauses = _pauses(monkeypatch, kombu.utils.functional)
    celery_app = _celery(
        broker_url=f"redis://127.0.0.1:{unreachable}/0", broker_connection_timeout=0.3
    )
    with pytest.raises(kombu.exceptions.OperationalError, match="Timeout connecting"):
        RedisSender(celery_app)
    assert len(pauses) == 2  # the policy's retries, each connect timed out


@pytest.mark.timeout(60)
def test_a_new_connection_to_a_broker_that_never_answers_times_out(
    queue: str, mute: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection's handshake waits broker_connection_timeout, then the push is retried."""
    sender = RedisSender(_celery(broker_connection_timeout=0.3))
    pool = sender._client.connection_pool
    pool.disconnect()
    pool.connection_kwargs["port"] = mute
    pauses = _pauses(monkeypatch, kombu.utils.functional)
    try:
        with pytest.raises(redis.TimeoutError):
            sender.send(PROCESS_TASK, 10, "t-10", queue)
    finally:
        sender.close()
    assert pauses == [0.2, 0.4]


class _Cuttable:
    """A TCP relay to Redis that can go silent, as a broker host that starts dropping packets."""

    def __init__(self, host: str, port: int) -> None:
        self.target, self.silent = (host, port), threading.Event()
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.05)
        self.port = int(self.listener.getsockname()[1])
        self.sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.silent.is_set():
            try:
                client = self.listener.accept()[0]
            except TimeoutError:
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self.sockets += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._relay, args=(source, sink), daemon=True).start()

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        source.settimeout(0.05)
        while not self.silent.is_set():
            try:
                data = source.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            try:
                sink.sendall(data)
            except OSError:
                return

    def cut(self) -> None:
        """Forward nothing more, and leave new connects hanging (the backlog full)."""
        self.silent.set()
        time.sleep(0.1)
        self.sockets += _fill_backlog(self.listener)

    def close(self) -> None:
        self.silent.set()
        for each in self.sockets:
            each.close()
        self.listener.close()


@pytest.mark.timeout(60)
def test_a_push_to_a_broker_that_stopped_answering_is_retried_once_per_policy_retry(
    queue: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The push on the open connection times out, then each retry makes one connect.

    Not the client's own retries of the connect inside each retry of the push:
    a dozen timeouts instead of four.
    """
    parts = urllib.parse.urlsplit(REDIS_URL)
    relay = _Cuttable(parts.hostname or "127.0.0.1", parts.port or 6379)
    credentials = parts.netloc.rpartition("@")[0]
    netloc = f"{credentials}@127.0.0.1:{relay.port}" if credentials else f"127.0.0.1:{relay.port}"
    url = parts._replace(netloc=netloc).geturl()
    sender = RedisSender(_celery(broker_url=url, broker_connection_timeout=0.3))
    try:
        sender.send(PROCESS_TASK, 11, "t-11", queue)  # over an open connection
        relay.cut()
        connects: list[int] = []
        real: Callable[..., Any] = redis.connection.Connection._connect

        def counted(connection: Any) -> Any:
            connects.append(1)
            return real(connection)

        monkeypatch.setattr(redis.connection.Connection, "_connect", counted)
        pauses = _pauses(monkeypatch, kombu.utils.functional)
        with pytest.raises(redis.TimeoutError):
            sender.send(PROCESS_TASK, 12, "t-12", queue)
    finally:
        sender.close()
        relay.close()
    assert len(connects) == 3
    assert pauses == [0.2, 0.4]


def test_transport_options_name_their_own_timeouts() -> None:
    """broker_transport_options win over broker_connection_timeout; None turns it off."""
    pool = RedisSender(_celery())._client.connection_pool
    assert pool.connection_kwargs["socket_timeout"] == 4.0  # Celery's default
    assert pool.connection_kwargs["socket_connect_timeout"] == 4.0
    assert pool.connection_kwargs["health_check_interval"] == 0
    named = {"socket_timeout": 7.0, "health_check_interval": 30}
    pool = RedisSender(_celery(broker_transport_options=named))._client.connection_pool
    assert pool.connection_kwargs["socket_timeout"] == 7.0
    # The redis client connects within socket_timeout when it is the only one.
    assert pool.connection_kwargs["socket_connect_timeout"] is None
    assert pool.connection_kwargs["health_check_interval"] == 30
    pool = RedisSender(_celery(broker_connection_timeout=None))._client.connection_pool
    assert pool.connection_kwargs["socket_timeout"] is None
    assert pool.connection_kwargs["socket_connect_timeout"] is None


@pytest.mark.timeout(60)
def test_apply_async_on_the_extension_s_celery_app_gives_up_after_the_connection_timeout(
    unreachable: int, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What goes through apply_async (retries, callbacks, beat) is bounded too."""
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_async_request import AsyncRequest

    app = Flask(__name__)
    app.config.update(
        SECRET_KEY="x" * 64,
        SQLALCHEMY_DATABASE_URI=f"sqlite:///{tmp_path}/jobs.db",
        CELERY={
            "broker_url": f"redis://127.0.0.1:{unreachable}/0",
            "broker_connection_timeout": 0.3,
        },
    )
    SQLAlchemy(app)
    AsyncRequest(app)
    _pauses(monkeypatch, kombu.utils.functional)
    with pytest.raises(kombu.exceptions.OperationalError, match="Timeout connecting"):
        app.extensions["celery"].send_task("anything", queue="anywhere")


@pytest.mark.parametrize(
    "options",
    [{"max_priority": 10}, {"message_ttl": 60}, {"queue_arguments": {"x-max-length": 5}}],
    ids=["priorities", "ttl", "arguments"],
)
def test_a_queue_declared_with_options_uses_apply_async(
    queue: str, options: dict[str, Any]
) -> None:
    """Priorities, expiry or arguments of a declared queue are applied by kombu's publish only."""
    declared = Queue(queue, Exchange(queue, type="direct"), routing_key=queue, **options)  # type: ignore[no-untyped-call]
    assert sender_for(_celery(task_queues=[declared]), queue) is None


def test_a_queue_celery_would_not_make_uses_apply_async(queue: str) -> None:
    """With task_create_missing_queues off, a queue not declared is left to apply_async."""
    assert sender_for(_celery(task_create_missing_queues=False), queue) is None
    assert sender_for(_celery(), queue) is not None


def test_one_sender_serves_an_app_in_a_process(queue: str) -> None:
    """The same sender is given for each queue of one Celery app, another for another app."""
    app = _celery()
    sender = sender_for(app, queue)
    assert sender is not None
    assert sender_for(app, queue + "-other") is sender
    other = sender_for(_celery(), queue)
    assert other is not None and other is not sender
