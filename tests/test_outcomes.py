"""What a run produces: outcomes, error bodies, stored params, and which storage errors recur."""

from __future__ import annotations

import json

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from flask_async_request.exceptions import DatabaseUnavailable, InvalidJobRow
from flask_async_request.models import JobStatus
from flask_async_request.outcomes import (
    Outcome,
    decode_params,
    error_body,
    error_message,
    failure,
    out_of_reach,
    storage_message,
)

#: What a driver's error says: SQL and parameters no client may read.
SQL = "UPDATE async_request_jobs SET response=%(response)s WHERE id = 7"


def test_error_body_is_json_with_the_message() -> None:
    """A failed job's body is {"error": message}."""
    assert json.loads(error_body('it "broke"')) == {"error": 'it "broke"'}


@given(st.text())
def test_error_message_reads_back_what_error_body_wrote(message: str) -> None:
    """Any message, put in an error body, comes back out unchanged."""
    assert error_message(error_body(message)) == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (None, ""),
        ("", ""),
        ("plain text", "plain text"),
        ('{"other": 1}', '{"other": 1}'),
        ("[1, 2]", "[1, 2]"),
        ('"a str"', '"a str"'),
        ("12", "12"),
        ('{"error": {"code": 3}}', '{"code": 3}'),
        ('{"error": null}', "null"),
        ('{"error": 5}', "5"),
    ],
)
def test_error_message_of_any_body(body: str | None, message: str) -> None:
    """A body that is no error body is its own message; an error that is no str reads as JSON."""
    assert error_message(body) == message


def test_an_outcome_is_a_status_a_code_a_body_and_maybe_a_type() -> None:
    """An Outcome has no content type unless one is given."""
    outcome = Outcome(JobStatus.PROCESSED, 201, "made")
    assert (outcome.status, outcome.status_code, outcome.body) == (JobStatus.PROCESSED, 201, "made")
    assert outcome.content_type is None
    assert Outcome(JobStatus.PROCESSED, 200, "a,b", "text/csv").content_type == "text/csv"


def test_failure_is_a_failed_500_with_the_error_body() -> None:
    """A run that failed with a message stores FAILED, 500 and {"error": message}."""
    assert failure("Boom") == Outcome(JobStatus.FAILED, 500, '{"error": "Boom"}', None)


# Stored params ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "args", "kwargs"),
    [
        ('{"args": [1, "two"], "kwargs": {"three": 3}}', [1, "two"], {"three": 3}),
        ('{"args": [1]}', [1], {}),
        ('{"kwargs": {"a": null}}', [], {"a": None}),
        ("{}", [], {}),
        ('{"args": [], "kwargs": {}, "extra": true}', [], {}),
    ],
)
def test_decode_params_gives_the_arguments(
    params: str, args: list[object], kwargs: dict[str, object]
) -> None:
    """Stored params are positional and keyword arguments; a missing part is empty."""
    assert decode_params(1, params) == (args, kwargs)


@pytest.mark.parametrize(
    "params",
    [None, "", "not json", "[]", "null", "3", '"args"', '{"args": {}}', '{"kwargs": []}'],
)
def test_decode_params_refuses_a_row_edited_by_hand(params: str | None) -> None:
    """Anything but {"args": [...], "kwargs": {...}} is an InvalidJobRow naming the job."""
    with pytest.raises(InvalidJobRow, match=r"^Job 12's stored params are not") as info:
        decode_params(12, params)
    assert info.value.job_id == 12
    assert repr(params or "") in str(info.value)


def test_decode_params_quotes_at_most_100_characters_of_the_row() -> None:
    """A huge bad value is quoted cut in the error."""
    params = "x" * 10_000
    with pytest.raises(InvalidJobRow) as info:
        decode_params(1, params)
    assert repr("x" * 100) in str(info.value)
    assert "x" * 101 not in str(info.value)


# Out of reach, or refused ----------------------------------------------------------------------


def _raised_from(error: BaseException, cause: BaseException) -> BaseException:
    """``error`` as ``raise error from cause`` leaves it."""
    try:
        raise error from cause
    except BaseException as raised:
        return raised


@pytest.mark.parametrize(
    "error",
    [
        DatabaseUnavailable("The database is out of reach."),
        sa.exc.OperationalError(SQL, {}, Exception("server closed the connection")),
        sa.exc.InterfaceError(SQL, {}, Exception("connection already closed")),
        sa.exc.DBAPIError(SQL, {}, Exception("reset"), connection_invalidated=True),
        sa.exc.ProgrammingError(SQL, {}, Exception("gone"), connection_invalidated=True),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_lost_connection_is_out_of_reach(error: BaseException) -> None:
    """The store's retries run out, an operational or interface error, a connection invalidated."""
    assert out_of_reach(error)


@pytest.mark.parametrize(
    "error",
    [
        sa.exc.DataError(SQL, {}, Exception("invalid byte sequence")),
        sa.exc.IntegrityError(SQL, {}, Exception("duplicate key")),
        sa.exc.ProgrammingError(SQL, {}, Exception("syntax error")),
        sa.exc.DBAPIError(SQL, {}, Exception("value too long")),
        ValueError("A string literal cannot contain NUL (0x00) characters."),
        RuntimeError("anything else"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_refused_value_is_not_out_of_reach(error: BaseException) -> None:
    """A value, a constraint or SQL the database refused would be refused again."""
    assert not out_of_reach(error)


def test_an_error_raised_from_a_lost_connection_is_out_of_reach() -> None:
    """The cause is followed, however deep."""
    lost = sa.exc.OperationalError(SQL, {}, Exception("terminating connection"))
    error = _raised_from(RuntimeError("outer"), _raised_from(ValueError("middle"), lost))
    assert out_of_reach(error)


def test_an_error_raised_from_a_refused_value_is_not_out_of_reach() -> None:
    """A chain of causes none of which lost the connection is a refusal."""
    refused = sa.exc.DataError(SQL, {}, Exception("invalid byte sequence"))
    assert not out_of_reach(_raised_from(RuntimeError("outer"), refused))


def test_only_an_explicit_cause_is_followed() -> None:
    """An error raised while handling a lost connection, not from it, is judged by itself."""
    try:
        try:
            raise sa.exc.OperationalError(SQL, {}, Exception("lost"))
        except sa.exc.OperationalError:
            raise ValueError("a bug in the handler") from None
    except ValueError as error:
        assert isinstance(error.__context__, sa.exc.OperationalError)
        assert not out_of_reach(error)


@pytest.mark.parametrize(("plural", "pronoun"), [(False, "it"), (True, "them")])
def test_storage_message_names_the_value_and_the_errors_class_only(
    plural: bool, pronoun: str
) -> None:
    """The sentence names what was refused and the error's class; never the SQL or parameters."""
    error = sa.exc.DataError(SQL, {"response": "secret"}, Exception("invalid byte sequence"))
    message = storage_message("The reply", error, plural=plural)
    assert message == (
        f"The reply could not be stored: the database refused {pronoun}"
        " (DataError; details are in the worker's log)."
    )
    assert "UPDATE" not in message and "secret" not in message


def test_a_failure_keeps_the_traceback_bounded_and_storable() -> None:
    """traceback_of keeps the end of a long traceback, with no NUL or lone surrogate."""
    from flask_async_request.outcomes import MAX_TRACEBACK, failure, traceback_of

    try:
        raise ValueError("bad \x00 value \ud800" + "x" * (2 * MAX_TRACEBACK))
    except ValueError as e:
        text = traceback_of(e)
    assert len(text) == MAX_TRACEBACK and text.startswith("...\n")
    assert "\x00" not in text and "\ud800" not in text
    try:
        raise KeyError("short")
    except KeyError as e:
        short = traceback_of(e)
    assert short.startswith("Traceback (most recent call last):") and "KeyError: 'short'" in short
    assert failure("boom", short).traceback == short
