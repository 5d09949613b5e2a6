"""Signals (blinker) sent as jobs move through their life.

Each is sent with the Flask app as sender and ``job_id`` as keyword argument,
in the process where the change happens: ``job_enqueued`` and ``job_cancelled``
in the web process, the others in the worker process::

    from flask_async_request import signals

    @signals.job_failed.connect
    def alert(app, job_id, error, **extra):
        ...
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

#: A job was stored and its message published (``job_id``, ``worker``).
job_enqueued = _signals.signal("job-enqueued")
#: A worker claimed a job and is about to run it (``job_id``, ``attempt``, ``worker``,
#: ``waited``: seconds since the job was due).
job_started = _signals.signal("job-started")
#: A running worker reported progress (``job_id``, ``progress``, ``message``).
job_progress = _signals.signal("job-progress")
#: A job's reply was stored (``job_id``, ``status_code``, ``worker``).
job_finished = _signals.signal("job-finished")
#: A job failed for good (``job_id``, ``error``, ``worker``).
job_failed = _signals.signal("job-failed")
#: A job was cancelled (``job_id``, ``worker``).
job_cancelled = _signals.signal("job-cancelled")
#: The sweeper ran (``republished``, ``requeued``, ``failed``: how many jobs of each).
jobs_swept = _signals.signal("jobs-swept")
#: A delivery of a job's callback was made and logged (``job_id``, ``outcome``:
#: ``delivered``, ``failed`` or ``refused``, ``status_code``, ``duration`` in
#: seconds, ``redelivery``: an operator's).
callback_delivered = _signals.signal("callback-delivered")
