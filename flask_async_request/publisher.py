"""The messages that run jobs, sent straight to a Redis broker.

Celery's ``apply_async`` is generic: it routes, builds the message from its
options, fires the publish signals and, on Redis, makes a new client object
for every message. A job's message is always the same shape (one task, one
integer argument), so on a Redis broker it is built here from a template and
pushed with one ``LPUSH`` on a client held for the process: a Celery protocol 2
message, as ``apply_async`` makes it, that ``celery worker`` consumes unchanged.

Whenever that would not be the same message, :func:`sender_for` answers
``None`` and the caller uses ``apply_async``: another transport, a task
serializer or compression other than plain JSON, eager mode, ``task_routes``,
a default priority, task-sent events, a queue routed through an exchange of
another kind or declared with arguments (expiry, limits, priorities), a
countdown, or receivers of Celery's ``before_task_publish`` /
``after_task_publish`` signals (tracing tools use them, and they must see
every message).
"""

from __future__ import annotations

import base64
import json
import os
import threading
import uuid
import weakref
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.signals import after_task_publish, before_task_publish
from kombu.utils.functional import retry_over_time

from .compat import anon_nodename, redis_channel_fits, redis_client, redis_list

#: The transports whose channels push to a Redis list per queue.
_REDIS_TRANSPORTS = frozenset({"redis", "rediss"})

#: The fourth part of a protocol 2 body: no callbacks, errbacks, chain or chord.
_EMBED = {"callbacks": None, "errbacks": None, "chain": None, "chord": None}


class RedisSender:
    """Pushes a task's messages onto the Redis lists its queues are, for one process."""

    def __init__(self, celery_app: Celery) -> None:
        policy = publish_retry_policy(celery_app)
        connection = celery_app.connection_for_write(
            transport_options=_transport_options(celery_app)
        )
        # Connecting (or failing to) takes as long as apply_async's publish would,
        # not the worker's patient connection retries (seconds per submission
        # while the broker is down).
        connection.ensure_connection(**policy)
        channel = connection.default_channel
        self._connection = connection
        # The channel's own client class and pool: its URL, password, TLS and
        # key prefix settings apply, as they do to apply_async.
        self._client = redis_client(channel)
        # Each push is tried once by the client, on a pooled connection or a new
        # one, and retried here as Celery's publish retry policy says: retries
        # of the client's own, inside each of these, would multiply the
        # timeouts a broker that stopped answering costs.
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self._client.set_retry(Retry(NoBackoff(), 0))
        # What kombu's publish takes for what the policy leaves out.
        self._policy = {"interval_start": 1, "interval_step": 1, "interval_max": 1, **policy}
        self._errors = (redis.ConnectionError, redis.TimeoutError)
        self._key = redis_list(channel)
        self._origin = anon_nodename()
        # The pool refuses more connections than its size instead of waiting for
        # one: threads (or greenlets) past it wait here for their turn.
        size = getattr(self._client.connection_pool, "max_connections", None)
        self._turns = threading.BoundedSemaphore(size if isinstance(size, int) else 10)

    def close(self) -> None:
        """Close the connections of this sender's pool."""
        self._client.connection_pool.disconnect()
        self._connection.release()

    def send(
        self,
        task_name: str,
        argument: int,
        task_id: str,
        queue: str,
        time_limit: float | None = None,
    ) -> None:
        """Push the message that runs ``task_name(argument)`` with id ``task_id`` onto ``queue``."""
        body = json.dumps([[argument], {}, _EMBED]).encode()
        headers: dict[str, Any] = {
            "lang": "py",
            "task": task_name,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [time_limit, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": f"({argument!r},)",
            "kwargsrepr": "{}",
            "origin": self._origin,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        }
        envelope = {
            "body": base64.b64encode(body).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": task_id,
                "reply_to": "",
                "delivery_mode": 2,
                "delivery_info": {"exchange": "", "routing_key": queue},
                "priority": 0,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        key, message = self._key(queue, 0), json.dumps(envelope)
        with self._turns:
            try:
                self._client.lpush(key, message)
            except self._errors as error:
                # A connection the server or the network cut while idle is made
                # again by the retry, as apply_async's would. The retries (and
                # their pauses) are the policy's, as if it had made the first
                # try: kombu's retry wrapper costs more than the push, so only a
                # push that failed pays for it.
                retry_over_time(  # type: ignore[no-untyped-call]
                    _failed_once(error, self._client.lpush),
                    self._errors,
                    (key, message),
                    **self._policy,
                )


def _failed_once(error: Exception, push: Callable[..., Any]) -> Callable[..., Any]:
    """``push``, whose first call raises ``error`` again: the try already made."""
    failed = [error]

    def again(*args: Any) -> Any:
        if failed:
            raise failed.pop()
        return push(*args)

    return again


#: What a retry policy says, as kombu takes it.
_POLICY_KEYS = ("max_retries", "interval_start", "interval_step", "interval_max")


def publish_retry_policy(celery_app: Celery) -> dict[str, Any]:
    """How long a publish retries a broker it cannot reach: as ``apply_async`` does.

    ``task_publish_retry_policy``, as Celery passes it to kombu (by default 3
    retries, 0.2 s, then 0.4 s apart); with ``task_publish_retry`` off, one
    retry at once, for a connection that was cut while idle.
    """
    conf = celery_app.conf
    if not conf.task_publish_retry:
        return {"max_retries": 1, "interval_start": 0}
    policy = conf.task_publish_retry_policy or {}
    return {key: policy[key] for key in _POLICY_KEYS if key in policy}


def _transport_options(celery_app: Celery) -> dict[str, float]:
    """How long the sender waits for the broker to answer a connect, or a push.

    ``broker_connection_timeout`` (Celery's default: 4 s) for each, unless
    ``broker_transport_options`` name their own. The Redis transport has no
    timeout by itself: a broker host that drops packets would hold a connect for
    the kernel's SYN retries (over two minutes, once per retry of the policy) and
    a push until TCP gives up, with the request that submits the job waiting.

    No health check either (a ``PING`` before a command on a connection idle
    for a while): the push itself is retried on a new connection when its own
    fails, and a check retried inside each retry of the push would multiply
    the timeouts a broker that stopped answering costs.
    """
    options = {"health_check_interval": 0.0}
    timeout = celery_app.conf.broker_connection_timeout
    if timeout is not None:
        options["socket_timeout"] = float(timeout)
    connect = connect_timeout(celery_app)
    if connect is not None:
        options["socket_connect_timeout"] = connect
    named = celery_app.conf.broker_transport_options or {}
    return {key: value for key, value in options.items() if key not in named}


def connect_timeout(celery_app: Celery) -> float | None:
    """``broker_connection_timeout``, for a Redis connect whose options name no timeout.

    ``None`` when they name one: ``socket_connect_timeout``, or ``socket_timeout``,
    which the redis client takes for connects too when it is the only one.
    """
    timeout = celery_app.conf.broker_connection_timeout
    named = celery_app.conf.broker_transport_options or {}
    if timeout is None or "socket_connect_timeout" in named or "socket_timeout" in named:
        return None
    return float(timeout)


_senders: weakref.WeakKeyDictionary[Celery, tuple[int, RedisSender | None]] = (
    weakref.WeakKeyDictionary()
)
_lock = threading.Lock()


def sender_for(celery_app: Celery, queue: str) -> RedisSender | None:
    """The process's :class:`RedisSender` for ``celery_app``, or ``None`` to use ``apply_async``."""
    if (
        before_task_publish.receivers
        or after_task_publish.receivers
        or celery_app.conf.task_always_eager
    ):
        return None
    pid = os.getpid()
    found = _senders.get(celery_app)
    if found is None or found[0] != pid:
        # Connected outside the lock: while the broker is down, each caller fails
        # after its own retries, not after those of every caller queued before it.
        made = RedisSender(celery_app) if _plain(celery_app) else None
        with _lock:
            found = _senders.get(celery_app)
            if found is None or found[0] != pid:
                found = _senders[celery_app] = (pid, made)
                made = None
        if made is not None:
            made.close()  # another thread's was kept
    sender = found[1]
    if sender is None or not _direct(celery_app, queue):
        return None
    return sender


def _plain(celery_app: Celery) -> bool:
    """Whether a job's message on this app is plain JSON, protocol 2, on a Redis broker,
    with nothing of Celery's routing or publishing options that would change it."""
    conf = celery_app.conf
    if conf.task_protocol != 2 or conf.task_serializer != "json" or conf.task_compression:
        return False
    accepted = {str(name) for name in (conf.accept_content or ())}
    if not accepted & {"json", "application/json"}:
        return False
    # Routes could send the task elsewhere, a default priority would be in the
    # message, and a task-sent event (Flower) would be sent along.
    if conf.task_routes or conf.task_default_priority is not None or conf.task_send_sent_event:
        return False
    with celery_app.connection_for_write() as probe:
        transport: Any = probe.transport_cls
        if not isinstance(transport, str) or transport not in _REDIS_TRANSPORTS:
            return False
        channel_class = probe.transport.Channel
    return redis_channel_fits(channel_class)


def _direct(celery_app: Celery, queue: str) -> bool:
    """Whether ``apply_async(queue=queue)`` would push onto the list named ``queue``."""
    declared = celery_app.amqp.queues.get(queue)
    if declared is None:
        # Made on first use: a direct exchange of its own name, keyed by its name.
        return bool(celery_app.conf.task_create_missing_queues)
    exchange = declared.exchange
    return (
        exchange is not None
        and exchange.type == "direct"
        and exchange.name in ("", queue)
        and declared.routing_key == queue
        # Expiry, length limits or priorities are applied by kombu's own publish.
        and not declared.queue_arguments
        and declared.expires is None
        and declared.message_ttl is None
        and declared.max_priority is None
    )
