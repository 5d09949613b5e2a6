"""Traces across the 202, and the job id on the library's log records.

With OpenTelemetry's API installed (the ``otel`` extra), the trace context of
the request that submits a job (``traceparent``, ``tracestate``, baggage, or
whatever the app's configured propagator writes) is stored with the job, as the
JSON text of the propagator's carrier. The worker restores it:

- the job's first attempt runs in a span whose parent is the submitting span;
- a later attempt (a retry, or a run again after its worker was lost), a run
  from a message the sweeper sent again, and a callback delivery start a new
  trace, with a link back to the submitting span,
  as OpenTelemetry's messaging conventions advise for work that is not part of
  the request's own latency;
- the callback's POST carries the delivery span's context (``traceparent``).

Without OpenTelemetry nothing is stored and every function here is a no-op.

Every log record of the library's logger carries ``job_id`` (``None`` outside a
job) and ``trace_id`` (the current trace's id in hex, ``None`` without one), for
a format such as ``%(job_id)s %(trace_id)s``; add :class:`JobLogFilter` to a
handler to give the same fields to records of other loggers (a worker's own).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from collections.abc import Iterator, MutableMapping
from typing import Any

try:
    from opentelemetry import baggage as _baggage
    from opentelemetry import context as _context
    from opentelemetry import propagate as _propagate
    from opentelemetry import trace as _trace
except ImportError:  # pragma: no cover - exercised by the test run without the extra
    _trace = None  # type: ignore[assignment]

#: Whether OpenTelemetry's API can be imported.
AVAILABLE = _trace is not None
#: The tracer providers whose spans record nothing: the API's own, before one is set.
_NOT_RECORDING: tuple[type[Any], ...] = (
    (_trace.ProxyTracerProvider, _trace.NoOpTracerProvider) if _trace is not None else ()
)
#: The instrumentation scope of the library's spans.
TRACER_NAME = "flask_async_request"
#: Longest carrier stored; a larger one (a huge baggage) is not stored at all.
MAX_CONTEXT_LENGTH = 8192

#: The job the current thread works on, for the log records.
_current_job: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "flask_async_request_job", default=None
)


def capture() -> str | None:
    """The current trace context as the JSON text of a propagator carrier; ``None`` if none."""
    if _trace is None:
        return None
    carrier: dict[str, str] = {}
    _propagate.inject(carrier)
    if not carrier:
        return None
    text = json.dumps(carrier, separators=(",", ":"), sort_keys=True)
    return text if len(text) <= MAX_CONTEXT_LENGTH else None


def _extracted(stored: str | None) -> Any:
    """The context a stored carrier holds; ``None`` for none or an unreadable one."""
    if _trace is None or not stored:
        return None
    try:
        carrier = json.loads(stored)
    except ValueError:
        return None
    if not isinstance(carrier, dict):
        return None
    return _propagate.extract({str(k): str(v) for k, v in carrier.items()})


@contextlib.contextmanager
def job_span(
    name: str, stored: str | None, job_id: int, *, child: bool, **attributes: Any
) -> Iterator[None]:
    """Run the block in span ``name`` for job ``job_id``, with the job id on the log records.

    :param stored: the job's stored carrier (see :func:`capture`).
    :param child: the span's parent is the stored context (a first attempt);
        otherwise the span starts a new trace linked to it. Either way the
        stored baggage is the current baggage inside the block.
    """
    job_token = _current_job.set(job_id)
    try:
        if _trace is None:
            yield
            return
        provider = _trace.get_tracer_provider()
        recording = not isinstance(provider, _NOT_RECORDING)
        extracted = _extracted(stored)
        parent = _context.Context()
        links = []
        if extracted is not None:
            if child:
                parent = extracted
            else:
                # A new trace, with the baggage the request gave it.
                for key, value in _baggage.get_all(extracted).items():
                    parent = _baggage.set_baggage(key, value, parent)
                span_context = _trace.get_current_span(extracted).get_span_context()
                if recording and span_context.is_valid:
                    links.append(_trace.Link(span_context))
        token = _context.attach(parent)
        try:
            if not recording:
                # No tracer provider yet (the API's proxy) or a no-op one: its span
                # would record nothing and leave the context as it is (the parent's
                # span current), and making it costs a job more than binding its
                # claim's parameters. A provider set later is found at the next job.
                yield
                return
            tracer = provider.get_tracer(TRACER_NAME)
            attributes = {"async_request.job_id": job_id, **attributes}
            with tracer.start_as_current_span(
                name, kind=_trace.SpanKind.CONSUMER, links=links, attributes=attributes
            ):
                yield
        finally:
            _context.detach(token)
    finally:
        _current_job.reset(job_token)


def inject(headers: MutableMapping[str, str]) -> None:
    """Add the current trace context to an outgoing request's ``headers``."""
    if _trace is not None:
        _propagate.inject(headers)


def current_job_id() -> int | None:
    """The id of the job the current thread works on, if any."""
    return _current_job.get()


def current_trace_id() -> str | None:
    """The current trace's id in hex, if a span is recording one."""
    if _trace is None:
        return None
    span_context = _trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None


class JobLogFilter(logging.Filter):
    """Give each record ``job_id`` and ``trace_id`` attributes (``None`` when there are none).

    The library's own logger carries one; add one to a handler for every
    record it writes, a worker's too::

        handler.addFilter(JobLogFilter())
        handler.setFormatter(logging.Formatter("%(job_id)s %(trace_id)s %(message)s"))
    """

    def filter(self, record: logging.LogRecord) -> bool:
        """Set the fields, unless the record has them already; never drop it."""
        if not hasattr(record, "job_id"):
            record.job_id = _current_job.get()
        if not hasattr(record, "trace_id"):
            record.trace_id = current_trace_id()
        return True


def _install_filter() -> None:
    logger = logging.getLogger(TRACER_NAME)
    if not any(isinstance(f, JobLogFilter) for f in logger.filters):
        logger.addFilter(JobLogFilter())


_install_filter()
