"""Validation of ASYNC_REQUEST_* settings at init_app."""

from __future__ import annotations

import dataclasses
import importlib.util
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from flask_async_request import ConfigurationError
from flask_async_request.config import (
    DEFAULTS,
    SETTINGS,
    InsecureKeyWarning,
    Settings,
    default_source,
    load_settings,
)
from flask_async_request.migrations import config_snippet
from tests.conftest import AppFactory, Internals


def rsa_pem_pair() -> tuple[str, str]:
    """A fresh RSA key pair as PEM strings (private, public)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


def test_defaults_are_filled_in(make_app: AppFactory, internals: Internals) -> None:
    """Missing keys get the documented defaults, visible in app.config."""
    app = make_app()
    settings = internals.settings(app)
    assert app.config["ASYNC_REQUEST_SIGN_ALGORITHM"] == "HS256"
    assert app.config["ASYNC_REQUEST_HEADER_KEY"] == "X-JOB-AUTHORIZATION"
    assert settings.token_expiration == timedelta(days=1)
    assert settings.jobs_expiration == timedelta(hours=24)
    assert settings.retry == 0
    assert settings.queue is None
    assert settings.clean_jobs is True
    assert settings.encode_key == settings.decode_key == app.config["SECRET_KEY"]


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("ASYNC_REQUEST_SIGN_ALGORITHM", "HS1024", "ASYNC_REQUEST_SIGN_ALGORITHM is 'HS1024'"),
        ("ASYNC_REQUEST_SIGN_ALGORITHM", "none", "ASYNC_REQUEST_SIGN_ALGORITHM is 'none'"),
        ("ASYNC_REQUEST_TOKEN_EXPIRATION", "1 day", "ASYNC_REQUEST_TOKEN_EXPIRATION is '1 day'"),
        ("ASYNC_REQUEST_TOKEN_EXPIRATION", 0, "a positive duration"),
        ("ASYNC_REQUEST_TOKEN_EXPIRATION", True, "ASYNC_REQUEST_TOKEN_EXPIRATION is True"),
        ("ASYNC_REQUEST_JOBS_EXPIRATION", timedelta(0), "a positive duration"),
        ("ASYNC_REQUEST_HEADER_KEY", "X JOB", "an HTTP header name"),
        ("ASYNC_REQUEST_HEADER_KEY", 42, "an HTTP header name"),
        ("ASYNC_REQUEST_URL_PREFIX", "jobs", 'starting with "/"'),
        ("ASYNC_REQUEST_QUEUE", "", "a queue name"),
        ("ASYNC_REQUEST_RETRY", True, "False or a number of retries"),
        ("ASYNC_REQUEST_RETRY", -1, "False or a number of retries"),
        ("ASYNC_REQUEST_RETRY", "3", "False or a number of retries"),
        ("ASYNC_REQUEST_CLEAN_JOBS", "yes", "True or False"),
        ("ASYNC_REQUEST_CLEAN_JOBS_CRON", "daily", "crontab string of five fields"),
        ("ASYNC_REQUEST_CLEAN_JOBS_CRON", "61 * * * *", "valid crontab"),
        ("ASYNC_REQUEST_TIMEOUT", 3, "Unknown setting 'ASYNC_REQUEST_TIMEOUT'"),
        ("CELERY", "redis://", "CELERY is 'redis://'"),
    ],
)
def test_bad_values_are_refused_naming_the_key(
    make_app: AppFactory, key: str, value: object, message: str
) -> None:
    """A wrong type or value is a ConfigurationError whose message names the key."""
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")) as info:
        make_app(create_tables=False, **{key: value})
    assert key in str(info.value)


def test_hs256_without_any_secret(make_app: AppFactory) -> None:
    """HS256 with neither ENCODE_KEY nor SECRET_KEY fails at init_app."""
    with pytest.raises(ConfigurationError, match=r"ASYNC_REQUEST_ENCODE_KEY.*SECRET_KEY"):
        make_app(create_tables=False, SECRET_KEY=None)


def test_hs256_refuses_a_pem_key(make_app: AppFactory) -> None:
    """An asymmetric PEM key given as an HMAC secret is refused."""
    _, public = rsa_pem_pair()
    with pytest.raises(ConfigurationError, match="ASYNC_REQUEST_ENCODE_KEY"):
        make_app(create_tables=False, ASYNC_REQUEST_ENCODE_KEY=public)


def test_rs256_needs_an_encode_key(make_app: AppFactory) -> None:
    """RS256 without ASYNC_REQUEST_ENCODE_KEY does not fall back to SECRET_KEY."""
    with pytest.raises(ConfigurationError, match="ASYNC_REQUEST_ENCODE_KEY is not set"):
        make_app(create_tables=False, ASYNC_REQUEST_SIGN_ALGORITHM="RS256")


def test_rs256_refuses_a_non_pem_key(make_app: AppFactory) -> None:
    """A secret string is not an RSA private key."""
    with pytest.raises(ConfigurationError, match="PEM private key for RS256"):
        make_app(
            create_tables=False,
            ASYNC_REQUEST_SIGN_ALGORITHM="RS256",
            ASYNC_REQUEST_ENCODE_KEY="not a key",
        )


def test_rs256_refuses_a_public_key_for_signing(make_app: AppFactory) -> None:
    """The encode key must be the private half."""
    _, public = rsa_pem_pair()
    with pytest.raises(ConfigurationError, match="PEM private key"):
        make_app(
            create_tables=False,
            ASYNC_REQUEST_SIGN_ALGORITHM="RS256",
            ASYNC_REQUEST_ENCODE_KEY=public,
        )


def test_rs256_refuses_a_bad_decode_key(make_app: AppFactory) -> None:
    """A decode key that is not a PEM public key is refused."""
    private, _ = rsa_pem_pair()
    with pytest.raises(ConfigurationError, match="ASYNC_REQUEST_DECODE_KEY"):
        make_app(
            create_tables=False,
            ASYNC_REQUEST_SIGN_ALGORITHM="RS256",
            ASYNC_REQUEST_ENCODE_KEY=private,
            ASYNC_REQUEST_DECODE_KEY="garbage",
        )


def test_int_seconds_are_accepted(make_app: AppFactory, internals: Internals) -> None:
    """Durations may be given as int seconds."""
    app = make_app(ASYNC_REQUEST_TOKEN_EXPIRATION=60, ASYNC_REQUEST_JOBS_EXPIRATION=3600)
    settings = internals.settings(app)
    assert settings.token_expiration == timedelta(seconds=60)
    assert settings.jobs_expiration == timedelta(hours=1)


@pytest.mark.parametrize(
    ("text", "seconds"), [("1h", 3600), ("90", 90), ("15m", 900), ("2d", 172800)]
)
def test_durations_take_the_command_lines_forms(
    make_app: Any, text: str, seconds: int, internals: Internals
) -> None:
    """A duration setting may be written as on the command line."""
    app = make_app(ASYNC_REQUEST_TOKEN_EXPIRATION=text, ASYNC_REQUEST_LEASE=text)
    settings = internals.settings(app)
    assert settings.token_expiration == settings.lease == timedelta(seconds=seconds)


def test_a_bad_duration_string_names_the_key(make_app: Any) -> None:
    """A string that is no duration is a ConfigurationError naming the key and the forms."""
    with pytest.raises(ConfigurationError, match="ASYNC_REQUEST_JOBS_EXPIRATION is '2 fortnights'"):
        make_app(ASYNC_REQUEST_JOBS_EXPIRATION="2 fortnights")


def test_a_short_hmac_key_warns_at_init_app(make_app: Any) -> None:
    """A 5-byte SECRET_KEY works but warns that it is too short for HS256."""
    with pytest.warns(InsecureKeyWarning, match="shorter than 32 bytes"):
        make_app(SECRET_KEY="short")


def test_a_long_enough_key_does_not_warn(make_app: Any) -> None:
    """A 32-byte key is quiet."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecureKeyWarning)
        make_app(SECRET_KEY="k" * 32)


def docs_table_lines() -> list[str]:
    """The reST lines of the docs' configuration table, from its Sphinx directive."""
    path = Path(__file__).resolve().parents[1] / "docs" / "_ext" / "settings_table.py"
    spec = importlib.util.spec_from_file_location("settings_table", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lines: list[str] = module.table_lines()
    return lines


def test_each_field_of_settings_is_one_row() -> None:
    """The rows after CELERY are the fields of Settings, in order, each naming its attribute."""
    celery, *rows = SETTINGS.values()
    assert (celery.key, celery.convert, celery.attribute) == ("CELERY", None, None)
    assert [row.attribute for row in rows] == [f.name for f in dataclasses.fields(Settings)]
    assert [row.key for row in rows] == list(DEFAULTS)
    assert all(key == row.key for key, row in SETTINGS.items())


def test_each_row_converts_its_own_default() -> None:
    """Every row has a converter, and the defaults load as the converters make them."""
    settings = load_settings({"SECRET_KEY": "k" * 32})
    for row in list(SETTINGS.values())[1:]:
        assert row.convert is not None and row.attribute is not None
        if row.default is not None:
            assert getattr(settings, row.attribute) == row.convert(row.key, row.default)


@pytest.mark.parametrize("value", [object(), [object()]], ids=["object", "list"])
@pytest.mark.parametrize("key", list(DEFAULTS))
def test_each_setting_refuses_a_wrong_type_in_a_sentence(key: str, value: object) -> None:
    """A value of no type a setting takes is refused with a sentence naming its key."""
    with pytest.raises(ConfigurationError, match=rf"^{key} is .+; expected .+\.$"):
        load_settings({"SECRET_KEY": "k" * 32, key: value})


def test_docs_and_init_show_every_row() -> None:
    """The docs' table and the snippet of init list every row with its default."""
    table = "\n".join(docs_table_lines())
    snippet = config_snippet()
    for key, row in SETTINGS.items():
        assert f"* - ``{key}``\n     - ``{default_source(row.default)}``" in table
        assert f"# {key} = {default_source(row.default)}\n" in snippet
