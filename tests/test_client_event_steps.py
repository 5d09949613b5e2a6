"""client_event_steps: events parsed a line at a time, and following decided with no I/O."""

from __future__ import annotations

from typing import Any

from flask_async_request import client_event_steps
from flask_async_request.client_event_steps import ProgressEvent, RawEvent, parse_events
from flask_async_request.client_polling import Sleep, Unreachable


def test_parse_events_follows_the_event_stream_format() -> None:
    """Comments are skipped, data lines joined, ids kept, a retry alone reported."""
    lines = [
        ": keep-alive\n",
        "\n",
        "retry: 1500\n",
        "\n",
        "id: 4\r\n",
        "event: progress\n",
        'data: {"progress":\n',
        "data:0.5}\n",
        "\n",
        "data: plain\n",
        "\n",
    ]
    assert list(parse_events(lines)) == [
        RawEvent("", "", None, 1500),
        RawEvent("progress", '{"progress":\n0.5}', "4", None),
        RawEvent("message", "plain", "4", None),
    ]


def test_parse_events_is_the_parser_fed_line_by_line() -> None:
    """EventParser completes an event at its blank line, ids kept across events."""
    parser = client_event_steps.EventParser()
    assert parser.feed("id: 3\n") is None
    assert parser.feed("data: a\n") is None
    assert parser.feed("data: b\n") is None
    assert parser.feed("\n") == RawEvent("message", "a\nb", "3", None)
    assert parser.feed(": heartbeat\n") is None
    assert parser.feed("\n") is None
    assert parser.feed("event: end\n") is None
    assert parser.feed("data: {}\n") is None
    assert parser.feed("\n") == RawEvent("end", "{}", "3", None)


def test_the_steps_resume_a_dropped_stream_from_its_last_id() -> None:
    """With no I/O: a stream cut after event 7 is opened again after its retry, from id 7."""
    steps = client_event_steps.event_steps("http://api.test/job", "t0ken", clock=lambda: 0.0)
    opened = next(steps)
    assert isinstance(opened, client_event_steps.OpenGet) and "Last-Event-ID" not in opened.headers
    stream = client_event_steps.Opened(200, {"Content-Type": "text/event-stream"})
    assert isinstance(steps.send(stream), client_event_steps.NextLine)
    sent = ["retry: 2500\n", "id: 7\n", "event: progress\n", 'data: {"progress": 0.5}\n', "\n"]
    step: Any = None
    for line in sent:
        step = steps.send(line)
    assert step == client_event_steps.Emit(ProgressEvent(0.5, None, "7"))
    assert isinstance(steps.send(None), client_event_steps.NextLine)
    pause = steps.send(Unreachable("reset"))
    assert pause == Sleep(2.5)
    again = steps.send(None)
    assert isinstance(again, client_event_steps.OpenGet)
    assert again.headers["Last-Event-ID"] == "7"
