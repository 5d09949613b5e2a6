"""The library's errors: one base, narrow classes, the context each carries, the app's answers."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
from flask import Flask

import flask_async_request
from flask_async_request import exceptions
from flask_async_request.exceptions import (
    AsyncRequestError,
    ConfigurationError,
    DatabaseUnavailable,
    EnqueueError,
    IdempotencyConflict,
    InvalidCallbackUrl,
    InvalidIdempotencyKey,
    InvalidJobRow,
    InvalidRequest,
    JobFinished,
    JobNotFailed,
    JobNotFound,
    JobStateError,
    StorageError,
    TimeLimitExceeded,
    UnstorableValue,
)
from tests.conftest import json_of

#: Every error class the module defines.
ERRORS = [
    value
    for value in vars(exceptions).values()
    if inspect.isclass(value)
    and issubclass(value, BaseException)
    and value.__module__ == exceptions.__name__
]


@pytest.mark.parametrize("error", ERRORS, ids=lambda error: error.__name__)
def test_every_error_is_an_async_request_error(error: type[BaseException]) -> None:
    """One except clause catches whatever the library raises."""
    assert issubclass(error, AsyncRequestError)
    assert issubclass(error, Exception)


def test_every_error_is_exported_from_the_package() -> None:
    """Each error is importable from flask_async_request itself, as the same class."""
    assert len(ERRORS) >= 20
    for error in ERRORS:
        assert error.__name__ in flask_async_request.__all__
        assert getattr(flask_async_request, error.__name__) is error


def test_configuration_error_is_a_value_error() -> None:
    """Callers catching ValueError catch configuration errors too."""
    assert issubclass(ConfigurationError, ValueError)


@pytest.mark.parametrize(
    "error", [InvalidIdempotencyKey, InvalidCallbackUrl, UnstorableValue, IdempotencyConflict]
)
def test_errors_of_a_clients_values_are_value_errors(error: type[Exception]) -> None:
    """What a client sent that cannot make a job is a ValueError."""
    assert issubclass(error, ValueError)


@pytest.mark.parametrize("error", [InvalidIdempotencyKey, InvalidCallbackUrl, UnstorableValue])
def test_a_clients_bad_value_is_an_invalid_request(error: type[Exception]) -> None:
    """Each refusal of a client's value narrows InvalidRequest, which the app answers 400."""
    assert issubclass(error, InvalidRequest)


def test_a_conflicting_idempotency_key_is_no_invalid_request() -> None:
    """A reused key is a 422, not the 400 of an InvalidRequest."""
    assert not issubclass(IdempotencyConflict, InvalidRequest)


def test_job_not_found_is_a_lookup_error_naming_the_job() -> None:
    """JobNotFound carries the id, says it in a sentence, and is a LookupError."""
    error = JobNotFound(42)
    assert isinstance(error, LookupError)
    assert error.job_id == 42
    assert str(error) == "There is no job 42."


def test_enqueue_error_carries_the_job_id_and_a_job_to_fill_in() -> None:
    """EnqueueError holds its message and job id; its job is None until the creator sets it."""
    error = EnqueueError("could not be published", 7)
    assert (str(error), error.job_id, error.job) == ("could not be published", 7, None)
    error.job = "the stored job"
    assert error.job == "the stored job"


@pytest.mark.parametrize("error", [InvalidJobRow, StorageError, IdempotencyConflict])
def test_errors_about_one_job_carry_its_id(error: Any) -> None:
    """The message is the one given; the job's id is an attribute."""
    raised = error("Job 3 is odd.", 3)
    assert str(raised) == "Job 3 is odd."
    assert raised.job_id == 3


@pytest.mark.parametrize("error", [JobStateError, JobFinished, JobNotFailed])
def test_a_refused_change_carries_the_job_and_its_status(error: type[JobStateError]) -> None:
    """JobFinished and JobNotFailed narrow JobStateError, with the job's id and status."""
    raised = error("Cannot.", 5, "processed")
    assert isinstance(raised, JobStateError)
    assert (str(raised), raised.job_id, raised.status) == ("Cannot.", 5, "processed")


def test_job_finished_and_job_not_failed_are_different_refusals() -> None:
    """A caller can tell a finished job from one that has not failed."""
    assert not issubclass(JobFinished, JobNotFailed)
    assert not issubclass(JobNotFailed, JobFinished)


def test_time_limit_exceeded_has_a_sentence_of_its_own() -> None:
    """Raised with no message, it says what happened; a message given replaces it."""
    assert str(TimeLimitExceeded()) == "The job ran past its time limit."
    assert str(TimeLimitExceeded("Too slow.")) == "Too slow."


def test_database_unavailable_keeps_the_drivers_error_as_its_cause() -> None:
    """The library's sentence is the message; the driver's error stays reachable as the cause."""
    driver = ConnectionRefusedError("connection refused")
    with pytest.raises(DatabaseUnavailable) as info:
        raise DatabaseUnavailable("The job could not be stored.") from driver
    assert str(info.value) == "The job could not be stored."
    assert info.value.__cause__ is driver


# The app's answers -----------------------------------------------------------------------------


def _raising_view(app: Flask, error: Exception) -> Any:
    """A client of ``app`` with a view at /raise that raises ``error``."""

    @app.post("/raise")
    def raise_it() -> Any:
        raise error

    return app.test_client()


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest("Bad request."),
        InvalidIdempotencyKey("Bad request."),
        InvalidCallbackUrl("Bad request."),
        UnstorableValue("Bad request."),
    ],
    ids=lambda error: type(error).__name__,
)
def test_an_invalid_request_is_answered_400_in_any_view(app: Flask, error: Exception) -> None:
    """A view of the app's own that lets an InvalidRequest through answers 400, its message in
    the JSON envelope."""
    response = _raising_view(app, error).post("/raise")
    assert response.status_code == 400
    assert json_of(response) == {"errors": [{"message": "Bad request."}]}


def test_an_idempotency_conflict_is_answered_422_in_any_view(app: Flask) -> None:
    """A reused Idempotency-Key with other arguments answers 422 with its message."""
    response = _raising_view(app, IdempotencyConflict("Used before.", 1)).post("/raise")
    assert response.status_code == 422
    assert json_of(response) == {"errors": [{"message": "Used before."}]}


def test_database_unavailable_is_answered_503_with_retry_after(app: Flask) -> None:
    """The database out of reach answers 503 and when to ask again; the message is not shown."""
    error = DatabaseUnavailable("secret host db.internal refused")
    response = _raising_view(app, error).post("/raise")
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) > 0
    assert "db.internal" not in response.get_data(as_text=True)
    assert json_of(response)["errors"][0]["message"]
