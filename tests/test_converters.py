"""The settings' converters: each value turned into a typed one, or refused in a sentence."""

from __future__ import annotations

from typing import Any

import pytest

from flask_async_request.converters import (
    duration,
    header_name,
    parse_duration,
)
from flask_async_request.exceptions import ConfigurationError

KEY = "ASYNC_REQUEST_SOMETHING"


@pytest.mark.parametrize("text", ["99999999999w", "1" * 400])
def test_parse_duration_refuses_a_duration_too_long_with_a_value_error(text: str) -> None:
    """A duration past what a timedelta holds is a ValueError, as the command line expects."""
    with pytest.raises(ValueError, match="too long"):
        parse_duration(text)


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), float("-inf"), 1e20, 10**20, "99999999999w"]
)
def test_duration_refuses_what_no_timedelta_holds(value: Any) -> None:
    """NaN, an infinity or a number past a timedelta's range is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match=f"^{KEY} is "):
        duration(KEY, value)


@pytest.mark.parametrize(
    "value", ["", "X JOB", "X:JOB", "X-JOB\n", "X-JOB\r\n", "\nX-JOB", "Jöb", "(x)", 42, None]
)
def test_header_name_refuses_what_no_header_is_called(value: Any) -> None:
    """Spaces, separators, line ends anywhere, non-ASCII letters and non-strings are refused."""
    with pytest.raises(ConfigurationError, match="expected an HTTP header name"):
        header_name(KEY, value)
