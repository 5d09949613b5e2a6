"""The settings' converters: each value turned into a typed one, or refused in a sentence."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import jwt.algorithms
import pytest
from celery.schedules import crontab
from hypothesis import given
from hypothesis import strategies as st

from flask_async_request.converters import (
    ASYMMETRIC_ALGORITHMS,
    HMAC_ALGORITHMS,
    HMAC_MINIMUM,
    LONGEST_DURATION,
    SUPPORTED_ALGORITHMS,
    boolean,
    choice,
    duration,
    format_duration,
    header_name,
    invalid,
    jwt_algorithm,
    key_material,
    optional,
    parse_duration,
    path_prefix,
    queue_name,
    retries,
    schedule,
    secret,
    whole_seconds,
)
from flask_async_request.exceptions import ConfigurationError
from flask_async_request.values import utcnow

KEY = "ASYNC_REQUEST_SOMETHING"


def test_invalid_names_the_key_what_it_got_and_what_is_right() -> None:
    """The error reads "<key> is <repr>; expected <what>." and is a ConfigurationError."""
    error = invalid(KEY, "x", "a number")
    assert isinstance(error, ConfigurationError)
    assert str(error) == f"{KEY} is 'x'; expected a number."


# Durations ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("30s", 30),
        ("15m", 900),
        ("2h", 7200),
        ("7d", 604800),
        ("1w", 604800),
        ("1.5h", 5400),
        ("2H", 7200),
        (" 2 h ", 7200),
        ("0", 0),
    ],
)
def test_parse_duration_reads_a_number_and_a_unit(text: str, seconds: int) -> None:
    """A number with an optional unit s, m, h, d or w, in either case, spaces allowed."""
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize(
    "text", ["", "h", "2x", "-1", "1 day", "2 fortnights", "2h30m", "1e3", "+5", "1,5h", "5\n6"]
)
def test_parse_duration_refuses_anything_else(text: str) -> None:
    """Anything but a number with one unit is a ValueError that shows the forms."""
    with pytest.raises(ValueError, match=r"is not a duration; .* such as 90, 15m, 2h or 7d"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["99999999999w", "1" * 400])
def test_parse_duration_refuses_a_duration_too_long_with_a_value_error(text: str) -> None:
    """A duration past what a timedelta holds is a ValueError, as the command line expects."""
    with pytest.raises(ValueError, match="too long"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m00s"),
        (307, "5m07s"),
        (3599, "59m59s"),
        (3600, "1h00m"),
        (10920, "3h02m"),
        (86399, "23h59m"),
        (86400, "1d00h"),
        (187200, "2d04h"),
        (-5, "0s"),
    ],
)
def test_format_duration_shows_the_two_largest_units(seconds: float, text: str) -> None:
    """Seconds, then minutes and seconds, hours and minutes, days and hours; never negative."""
    assert format_duration(timedelta(seconds=seconds)) == text


_FORMATTED = re.compile(r"(\d+)([smhd])(?:(\d\d)([smh]))?")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@given(st.integers(min_value=0, max_value=10**9))
def test_format_duration_is_the_duration_cut_to_its_smaller_unit(seconds: int) -> None:
    """What format_duration shows is the duration, less what its smaller unit leaves out."""
    text = format_duration(timedelta(seconds=seconds))
    match = _FORMATTED.fullmatch(text)
    assert match is not None, text
    big, big_unit, small, small_unit = match.groups()
    shown = int(big) * _SECONDS[big_unit]
    smallest = _SECONDS[big_unit]
    if small is not None:
        assert int(small) < _SECONDS[big_unit] // _SECONDS[small_unit]
        shown += int(small) * _SECONDS[small_unit]
        smallest = _SECONDS[small_unit]
    assert shown <= seconds < shown + smallest


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2h", timedelta(hours=2)),
        (timedelta(minutes=3), timedelta(minutes=3)),
        (90, timedelta(seconds=90)),
        (0.5, timedelta(milliseconds=500)),
    ],
)
def test_duration_takes_strings_timedeltas_and_seconds(value: Any, expected: timedelta) -> None:
    """A duration setting may be a string as on the command line, a timedelta or seconds."""
    assert duration(KEY, value) == expected


@pytest.mark.parametrize("value", [0, -1, timedelta(0), timedelta(seconds=-1), "0", "0s"])
def test_duration_refuses_what_is_not_positive(value: Any) -> None:
    """Zero and negative durations are refused."""
    with pytest.raises(ConfigurationError, match=f"^{KEY} is .*; expected a positive duration"):
        duration(KEY, value)


@pytest.mark.parametrize("value", [True, False, None, [60], b"60", object()])
def test_duration_refuses_other_types(value: Any) -> None:
    """A bool is no number of seconds, and neither is anything but a number, str or timedelta."""
    with pytest.raises(ConfigurationError, match=r"a number of seconds, a datetime\.timedelta"):
        duration(KEY, value)


def test_duration_refuses_a_bad_string_saying_why() -> None:
    """A string that is no duration is refused with the parser's reason, which is its cause."""
    with pytest.raises(ConfigurationError, match=r"a duration such as 90.*is not a duration") as e:
        duration(KEY, "1 day")
    assert isinstance(e.value.__cause__, ValueError)


@pytest.mark.parametrize(
    "value", [float("nan"), float("inf"), float("-inf"), 1e20, 10**20, "99999999999w"]
)
def test_duration_refuses_what_no_timedelta_holds(value: Any) -> None:
    """NaN, an infinity or a number past a timedelta's range is a ConfigurationError."""
    with pytest.raises(ConfigurationError, match=f"^{KEY} is "):
        duration(KEY, value)


@pytest.mark.parametrize(
    "value", [timedelta(days=36_526), timedelta.max, 10**10, "5300w", "36526d"]
)
def test_duration_refuses_what_would_take_a_date_out_of_range(value: Any) -> None:
    """A duration longer than 100 years is refused, rather than every expiry it sets failing."""
    with pytest.raises(ConfigurationError, match=r"at most 100 years \(36,525 days\)"):
        duration(KEY, value)


def test_the_longest_duration_keeps_dates_in_range() -> None:
    """The longest duration taken, added to now or taken from it, is still a date."""
    assert duration(KEY, LONGEST_DURATION) == LONGEST_DURATION
    assert utcnow() - LONGEST_DURATION < utcnow() + LONGEST_DURATION


# Optional, schedules ---------------------------------------------------------------------------


def test_optional_passes_none_and_converts_the_rest() -> None:
    """None stays None; any other value goes through the converter, refusals included."""
    convert = optional(duration)
    assert convert(KEY, None) is None
    assert convert(KEY, 60) == timedelta(minutes=1)
    with pytest.raises(ConfigurationError, match="a positive duration"):
        convert(KEY, 0)


def test_schedule_reads_a_crontab_string_field_by_field() -> None:
    """A five-field string is a crontab with each field where cron has it."""
    value = schedule(KEY, "5 4 1 2 3")
    assert isinstance(value, crontab)
    assert value == crontab(minute=5, hour=4, day_of_month=1, month_of_year=2, day_of_week=3)


@pytest.mark.parametrize(
    ("value", "expected"),
    [(30, timedelta(seconds=30)), (0.5, timedelta(milliseconds=500)), (timedelta(hours=1), None)],
)
def test_schedule_takes_an_interval(value: Any, expected: timedelta | None) -> None:
    """Seconds or a timedelta are an interval between runs."""
    assert schedule(KEY, value) == (expected or value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("daily", "a crontab string of five fields"),
        ("0 0 * *", "a crontab string of five fields"),
        ("0 0 * * * *", "a crontab string of five fields"),
        ("61 * * * *", "a valid crontab string"),
        ("* 25 * * *", "a valid crontab string"),
        (True, "a crontab string such as"),
        (None, "a crontab string such as"),
        (["0", "0", "*", "*", "*"], "a crontab string such as"),
        (0, "a positive duration"),
    ],
)
def test_schedule_refuses_what_is_neither(value: Any, message: str) -> None:
    """Wrong field counts, values out of cron's ranges, bools and other types are refused."""
    with pytest.raises(ConfigurationError, match=f"^{KEY} is .*{re.escape(message)}"):
        schedule(KEY, value)


# Plain values ----------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [True, False])
def test_boolean_takes_a_bool(value: bool) -> None:
    """True and False are taken as they are."""
    assert boolean(KEY, value) is value


@pytest.mark.parametrize("value", [1, 0, "true", "False", None, []])
def test_boolean_refuses_what_merely_looks_true_or_false(value: Any) -> None:
    """1, "true" or None is no bool."""
    with pytest.raises(ConfigurationError, match="expected True or False"):
        boolean(KEY, value)


@pytest.mark.parametrize("value", [0, 1, 3600])
def test_whole_seconds_takes_an_int_of_zero_or_more(value: int) -> None:
    """0 and more seconds, as an int."""
    assert whole_seconds(KEY, value) == value


@pytest.mark.parametrize("value", [-1, 1.5, 2.0, True, "5", None])
def test_whole_seconds_refuses_the_rest(value: Any) -> None:
    """Negative numbers, floats, bools and strings are refused."""
    with pytest.raises(ConfigurationError, match=r"a whole number of seconds \(>= 0\)"):
        whole_seconds(KEY, value)


@pytest.mark.parametrize(("value", "expected"), [(False, 0), (None, 0), (0, 0), (3, 3)])
def test_retries_takes_false_none_or_a_count(value: Any, expected: int) -> None:
    """False and None mean no retry; an int is the number of retries."""
    assert retries(KEY, value) == expected


@pytest.mark.parametrize("value", [True, -1, 1.0, "3"])
def test_retries_refuses_the_rest(value: Any) -> None:
    """True is not a count, and neither is a negative number, a float or a string."""
    with pytest.raises(ConfigurationError, match="False or a number of retries"):
        retries(KEY, value)


def test_choice_takes_one_of_its_choices_and_lists_them_sorted_when_refusing() -> None:
    """A value among the choices is taken; any other is refused naming them all, in order."""
    convert = choice({"b", "a", "c"})
    assert convert(KEY, "b") == "b"
    for value in ("B", "d", None, ["a"]):
        with pytest.raises(ConfigurationError, match="expected one of a, b, c"):
            convert(KEY, value)


@pytest.mark.parametrize(
    "value", ["X-JOB-AUTHORIZATION", "Authorization", "x_job", "A!#$%&'*+.^`|~9"]
)
def test_header_name_takes_an_http_token(value: str) -> None:
    """Any name made of HTTP's token characters is taken as it is."""
    assert header_name(KEY, value) == value


@pytest.mark.parametrize(
    "value", ["", "X JOB", "X:JOB", "X-JOB\n", "X-JOB\r\n", "\nX-JOB", "Jöb", "(x)", 42, None]
)
def test_header_name_refuses_what_no_header_is_called(value: Any) -> None:
    """Spaces, separators, line ends anywhere, non-ASCII letters and non-strings are refused."""
    with pytest.raises(ConfigurationError, match="expected an HTTP header name"):
        header_name(KEY, value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("/async_request", "/async_request"),
        ("/jobs/", "/jobs"),
        ("/a/b//", "/a/b"),
        ("", ""),
        ("/", ""),
    ],
)
def test_path_prefix_loses_its_trailing_slashes(value: str, expected: str) -> None:
    """A path starting with "/" or "" is taken, without trailing slashes."""
    assert path_prefix(KEY, value) == expected


@pytest.mark.parametrize("value", ["jobs", "jobs/", None, b"/jobs"])
def test_path_prefix_refuses_a_relative_path_or_a_non_string(value: Any) -> None:
    """A path must start with "/" and be a str."""
    with pytest.raises(ConfigurationError, match='a path starting with "/"'):
        path_prefix(KEY, value)


@pytest.mark.parametrize("value", [None, "slow", "jobs.high"])
def test_queue_name_takes_none_or_a_name(value: str | None) -> None:
    """None is Celery's default queue; a name is taken as it is."""
    assert queue_name(KEY, value) == value


@pytest.mark.parametrize("value", ["", 3, b"slow"])
def test_queue_name_refuses_an_empty_name_or_a_non_string(value: Any) -> None:
    """An empty name, or anything but a str, is refused."""
    with pytest.raises(
        ConfigurationError, match=r"None \(Celery's default queue\) or a queue name"
    ):
        queue_name(KEY, value)


@pytest.mark.parametrize("value", [None, "s3cret", b"s3cret"])
def test_secret_takes_none_str_or_bytes(value: str | bytes | None) -> None:
    """A secret is None, or a non-empty str or bytes, kept as it is."""
    assert secret(KEY, value) == value


@pytest.mark.parametrize("value", ["", b"", 12345, ["hunter2"]])
def test_secret_refuses_without_showing_the_value(value: Any) -> None:
    """An empty or wrongly typed secret is refused; the message never echoes it."""
    with pytest.raises(ConfigurationError, match="a non-empty str or bytes secret") as e:
        secret(KEY, value)
    assert str(e.value) == f"{KEY} is '<key>'; expected a non-empty str or bytes secret."


# Algorithms and keys ---------------------------------------------------------------------------


def test_the_algorithm_tables_agree() -> None:
    """Every supported algorithm is HMAC or asymmetric, each HMAC one with its hash's size."""
    assert SUPPORTED_ALGORITHMS == HMAC_ALGORITHMS | ASYMMETRIC_ALGORITHMS
    assert not HMAC_ALGORITHMS & ASYMMETRIC_ALGORITHMS
    assert {"HS256", "RS256"} <= SUPPORTED_ALGORITHMS
    assert HMAC_MINIMUM == {"HS256": 32, "HS384": 48, "HS512": 64}


@pytest.mark.parametrize("algorithm", sorted(SUPPORTED_ALGORITHMS))
def test_jwt_algorithm_takes_every_supported_one(algorithm: str) -> None:
    """Each supported algorithm is taken, and PyJWT knows it."""
    assert jwt_algorithm(KEY, algorithm) == algorithm
    assert algorithm in jwt.algorithms.get_default_algorithms()


@pytest.mark.parametrize("value", ["none", "HS1024", "hs256", "EdDSA", "", None, 256])
def test_jwt_algorithm_refuses_the_rest(value: Any) -> None:
    """The name none, unknown names, another case and non-strings are refused, listing the rest."""
    with pytest.raises(
        ConfigurationError, match=r"expected one of ES256, ES384, .*, RS512\.$"
    ) as e:
        jwt_algorithm(KEY, value)
    assert str(e.value).startswith(f"{KEY} is {value!r};")


@pytest.mark.parametrize("algorithm", sorted(ASYMMETRIC_ALGORITHMS))
def test_an_asymmetric_algorithm_without_cryptography_says_to_install_it(
    monkeypatch: pytest.MonkeyPatch, algorithm: str
) -> None:
    """Where cryptography does not import, RS, PS and ES algorithms name the package to install."""
    monkeypatch.setattr(jwt.algorithms, "has_crypto", False)
    with pytest.raises(ConfigurationError, match=r"needs the cryptography package.*\[rsa\]"):
        jwt_algorithm(KEY, algorithm)


@pytest.mark.parametrize("algorithm", sorted(HMAC_ALGORITHMS))
def test_an_hmac_algorithm_needs_no_cryptography(
    monkeypatch: pytest.MonkeyPatch, algorithm: str
) -> None:
    """HS algorithms are taken whether or not cryptography imports."""
    monkeypatch.setattr(jwt.algorithms, "has_crypto", False)
    assert jwt_algorithm(KEY, algorithm) == algorithm


@pytest.mark.parametrize("value", ["secret", b"secret", None, object()])
def test_key_material_is_kept_as_given(value: object) -> None:
    """A key is checked later, with its algorithm: the converter hands back the very object."""
    assert key_material(KEY, value) is value
