"""What the commands share: parameter types, ``--json``, tables and errors as messages."""

from __future__ import annotations

import json
from datetime import timedelta

import click
import pytest
import sqlalchemy.exc

from flask_async_request import JobNotFound
from flask_async_request.cli.options import (
    DURATION,
    STATUS,
    echo_json,
    errors_as_messages,
    table,
)


@pytest.mark.parametrize(
    "error", [JobNotFound(3), ValueError("status is 'nope'."), LookupError("'odd' is not a status")]
)
def test_the_librarys_and_value_errors_become_an_error_line(error: Exception) -> None:
    """An AsyncRequestError, ValueError or LookupError is a ClickException with its sentence."""

    @errors_as_messages
    def command() -> None:
        raise error

    with pytest.raises(click.ClickException) as info:
        command()
    assert info.value.message == str(error)
    assert info.value.__cause__ is error


def test_a_database_error_says_what_to_check() -> None:
    """A refused query names the driver's first line and how to create the table."""

    @errors_as_messages
    def command() -> None:
        raise sqlalchemy.exc.OperationalError(
            "SELECT 1", {}, Exception("no such table: jobs\nmore")
        )

    with pytest.raises(click.ClickException) as info:
        command()
    assert "(no such table: jobs)" in info.value.message
    assert "flask db upgrade" in info.value.message


def test_other_errors_and_results_pass_through() -> None:
    """A bug is not turned into a message, and a result comes back as it is."""

    @errors_as_messages
    def broken() -> None:
        raise RuntimeError("bug")

    @errors_as_messages
    def fine(value: int) -> int:
        return value * 2

    with pytest.raises(RuntimeError):
        broken()
    assert fine(21) == 42


def test_a_duration_parses_with_its_unit_or_is_given_as_it_is() -> None:
    """15m is 900 seconds; a timedelta (a default) is taken unchanged."""
    assert DURATION.convert("15m", None, None) == timedelta(minutes=15)
    assert DURATION.convert(timedelta(hours=1), None, None) == timedelta(hours=1)


def test_a_duration_that_does_not_parse_is_a_bad_parameter() -> None:
    """The parser's sentence is the parameter's error."""
    with pytest.raises(click.BadParameter, match="such as 90, 15m, 2h or 7d"):
        DURATION.convert("soon", None, None)


def test_statuses_are_the_job_statuses_in_any_case() -> None:
    """Every JobStatus value is a choice, whatever its case."""
    assert STATUS.convert("FAILED", None, None) == "failed"
    assert set(STATUS.choices) == {"waiting", "processing", "processed", "failed", "cancelled"}


def test_a_table_aligns_its_columns_and_ends_lines_without_spaces() -> None:
    """Each column as wide as its widest cell, two spaces apart, no trailing blanks."""
    assert table([["ID", "STATUS"], ["10", "ok"], ["7", "failed"]]).splitlines() == [
        "ID  STATUS",
        "10  ok",
        "7   failed",
    ]


def test_json_is_printed_indented_and_unescaped(capsys: pytest.CaptureFixture[str]) -> None:
    """Non-ASCII text stays readable; the output parses back to the value."""
    echo_json({"worker": "café", "ids": [1, 2]})
    out = capsys.readouterr().out
    assert "café" in out and '\n  "ids"' in out
    assert json.loads(out) == {"worker": "café", "ids": [1, 2]}
