"""Signing job tokens: the key prepared once per app, the tokens those of jwt.encode."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from flask_async_request import Job, tokens
from flask_async_request.state import get_state
from flask_async_request.tokens import TokenSigner
from tests import workers
from tests.conftest import AppFactory

_NOW = datetime(2026, 5, 1, 12, 30, 15, 250000, tzinfo=timezone.utc)


def _count_prepares(monkeypatch: pytest.MonkeyPatch, algorithm: str) -> list[object]:
    """The keys the algorithm's ``prepare_key`` is called with, from now on."""
    kind = type(jwt.get_algorithm_by_name(algorithm))
    real = kind.prepare_key
    prepared: list[object] = []

    def counted(self: Any, key: Any) -> Any:
        prepared.append(key)
        return real(self, key)

    monkeypatch.setattr(kind, "prepare_key", counted)
    return prepared


def test_the_signing_key_is_prepared_once_per_app(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three jobs' tokens prepare the HMAC key once, not once per token as jwt.encode does."""
    prepared = _count_prepares(monkeypatch, "HS256")
    made = [Job.create_and_enqueue(workers.Echo, n) for n in range(3)]
    assert len({job.token for job in made}) == 3
    assert prepared == [app.config["SECRET_KEY"]]


def test_each_app_prepares_its_own_key(
    make_app: AppFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two apps with different keys each sign with their own, each prepared once."""
    first, second = make_app(), make_app(SECRET_KEY="another-secret-" * 4)
    prepared = _count_prepares(monkeypatch, "HS256")
    made = []
    for app in (first, second, first, second):
        with app.app_context():
            job = Job.create_and_enqueue(workers.Echo)
            made.append((app, job.id, job.token))
    assert prepared == [first.config["SECRET_KEY"], second.config["SECRET_KEY"]]
    for app, job_id, token in made:
        with app.app_context():
            assert get_state().verify_token(token).job_id == job_id


@pytest.mark.parametrize("owner", [None, "user-7"])
def test_a_token_is_the_one_jwt_encode_makes(
    app: Flask, monkeypatch: pytest.MonkeyPatch, owner: str | None
) -> None:
    """Byte for byte: the same header, claims, NumericDates and signature."""
    monkeypatch.setattr(tokens, "utcnow", lambda: _NOW)
    settings = get_state().settings
    claims: dict[str, object] = {
        "job_id": 42,
        "jti": "a" * 32,
        "iat": _NOW,
        "exp": _NOW + settings.token_expiration,
    }
    if owner is not None:
        claims["sub"] = owner
    expected = jwt.encode(claims, settings.encode_key, algorithm="HS256")
    assert TokenSigner(settings)(42, "a" * 32, owner) == expected


def test_an_rs256_token_verifies_with_jwt_decode(make_app: AppFactory) -> None:
    """With an RSA key, the token is one PyJWT verifies with the public key."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    app = make_app(ASYNC_REQUEST_SIGN_ALGORITHM="RS256", ASYNC_REQUEST_ENCODE_KEY=key)
    with app.app_context():
        job = Job.create_and_enqueue(workers.Echo)
        claims = jwt.decode(job.token, key.public_key(), algorithms=["RS256"])
        assert (claims["job_id"], claims["jti"]) == (job.id, job.uid)
        assert jwt.get_unverified_header(job.token) == {"alg": "RS256", "typ": "JWT"}
