"""Job tokens: signed and verified with the app's algorithm and keys, taken out of a header."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask
from hypothesis import given
from hypothesis import strategies as st

from flask_async_request import Job, tokens
from flask_async_request.config import Settings, load_settings
from flask_async_request.exceptions import InvalidToken
from flask_async_request.tokens import (
    MAX_TOKEN_LENGTH,
    TokenClaims,
    TokenSigner,
    TokenVerifier,
    decode_token,
    encode_token,
    token_from_header,
)
from tests import workers
from tests.conftest import INTERNALS, SECRET, AppFactory
from tests.test_config import rsa_pem_pair

UID = "0123456789abcdef0123456789abcdef"


def _settings(**config: Any) -> Settings:
    """The settings an app with ``config`` (and the tests' SECRET_KEY) would have."""
    return load_settings({"SECRET_KEY": SECRET, **config})


HS256 = _settings()


def _forge(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    """A token of ``claims`` signed by hand, as a client could."""
    return jwt.encode(claims, key, algorithm=algorithm)


def _claims(**overrides: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "job_id": 1,
        "jti": UID,
        "exp": datetime.now(timezone.utc) + timedelta(hours=1),
    }
    claims.update(overrides)
    return claims


# Signing and verifying ------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["HS256", "HS384", "HS512"])
def test_a_signed_token_verifies_to_its_claims(algorithm: str) -> None:
    """The job id, its row's uid and its owner come back from the token, under each HS algorithm."""
    settings = _settings(ASYNC_REQUEST_SIGN_ALGORITHM=algorithm)
    token = encode_token(12, UID, "alice", settings)
    assert jwt.get_unverified_header(token)["alg"] == algorithm
    assert decode_token(token, settings) == TokenClaims(job_id=12, uid=UID, owner="alice")


def test_rs256_signs_with_the_private_key_and_verifies_with_the_public_one() -> None:
    """An RS256 token verifies with the public half alone."""
    private, public = rsa_pem_pair()
    settings = _settings(
        ASYNC_REQUEST_SIGN_ALGORITHM="RS256",
        ASYNC_REQUEST_ENCODE_KEY=private,
        ASYNC_REQUEST_DECODE_KEY=public,
    )
    token = encode_token(3, UID, None, settings)
    assert jwt.decode(token, public, algorithms=["RS256"])["job_id"] == 3
    assert decode_token(token, settings) == TokenClaims(job_id=3, uid=UID)


def test_the_claims_name_the_job_its_row_and_its_owner() -> None:
    """job_id, jti (the uid) and sub (the owner) are in the token; no sub without an owner."""
    owned = jwt.decode(encode_token(5, UID, "bob", HS256), SECRET, algorithms=["HS256"])
    assert (owned["job_id"], owned["jti"], owned["sub"]) == (5, UID, "bob")
    anonymous = jwt.decode(encode_token(5, UID, None, HS256), SECRET, algorithms=["HS256"])
    assert "sub" not in anonymous


def test_a_token_expires_after_the_token_expiration() -> None:
    """exp is iat plus ASYNC_REQUEST_TOKEN_EXPIRATION, and iat is now."""
    before = int(time.time())
    token = encode_token(1, UID, None, _settings(ASYNC_REQUEST_TOKEN_EXPIRATION=90))
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert before <= claims["iat"] <= int(time.time())
    assert claims["exp"] - claims["iat"] == 90


def test_with_expiry_hands_back_the_exp_claim_too() -> None:
    """with_expiry=True gives the claims and the expiry as a float timestamp."""
    token = encode_token(1, UID, None, HS256)
    claims, expires = decode_token(token, HS256, with_expiry=True)
    assert claims == TokenClaims(job_id=1, uid=UID)
    assert isinstance(expires, float)
    assert expires == jwt.decode(token, SECRET, algorithms=["HS256"])["exp"]


def test_a_token_signed_in_the_past_is_expired(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token whose expiration has passed is refused."""
    two_days_ago = datetime.now(timezone.utc) - timedelta(days=2)
    monkeypatch.setattr(tokens, "utcnow", lambda: two_days_ago)
    token = encode_token(1, UID, None, HS256)
    with pytest.raises(InvalidToken, match="expired"):
        decode_token(token, HS256)


@given(
    job_id=st.integers(min_value=1, max_value=2**63 - 1),
    uid=st.text(),
    owner=st.none() | st.text(),
)
def test_any_job_signs_and_verifies_to_the_same_claims(
    job_id: int, uid: str, owner: str | None
) -> None:
    """Every valid id, any uid and any owner come back as they were signed."""
    token = encode_token(job_id, uid, owner, HS256)
    assert decode_token(token, HS256) == TokenClaims(job_id=job_id, uid=uid, owner=owner)


# Refusals -------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_tampered_payload_is_refused() -> None:
    """Another job id put in a signed token's payload breaks its signature."""
    header, payload, signature = encode_token(1, UID, None, HS256).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["job_id"] = 2
    forged = _b64(json.dumps(claims).encode())
    with pytest.raises(InvalidToken, match="Signature verification failed"):
        decode_token(f"{header}.{forged}.{signature}", HS256)


def test_a_tampered_signature_is_refused() -> None:
    """A signature changed by one character is refused."""
    token = encode_token(1, UID, None, HS256)
    last = "A" if token[-2] != "A" else "B"
    with pytest.raises(InvalidToken):
        decode_token(token[:-2] + last + token[-1], HS256)


def test_a_token_signed_with_another_key_is_refused() -> None:
    """A token of another app (another secret) is refused."""
    other = _settings(SECRET_KEY="another-secret-that-is-long-enough-for-hs256-signing")
    with pytest.raises(InvalidToken, match="Signature verification failed"):
        decode_token(encode_token(1, UID, None, other), HS256)


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_the_algorithm_is_pinned(algorithm: str) -> None:
    """A token signed with the right key under another algorithm is refused."""
    token = _forge(_claims(), algorithm=algorithm)
    with pytest.raises(InvalidToken):
        decode_token(token, HS256)
    assert decode_token(token, _settings(ASYNC_REQUEST_SIGN_ALGORITHM=algorithm)).job_id == 1


def test_an_unsigned_token_is_refused() -> None:
    """alg none is never accepted."""
    header = _b64(b'{"alg":"none","typ":"JWT"}')
    payload = _b64(json.dumps(_claims(exp=4102444800)).encode())
    with pytest.raises(InvalidToken):
        decode_token(f"{header}.{payload}.", HS256)


def test_an_hs256_token_keyed_with_the_rs256_public_key_is_refused() -> None:
    """Key confusion: the public key used as an HMAC secret does not pass an RS256 app."""
    private, public = rsa_pem_pair()
    settings = _settings(
        ASYNC_REQUEST_SIGN_ALGORITHM="RS256",
        ASYNC_REQUEST_ENCODE_KEY=private,
        ASYNC_REQUEST_DECODE_KEY=public,
    )
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    payload = _b64(json.dumps(_claims(exp=4102444800)).encode())
    signing_input = f"{header}.{payload}"
    signature = hmac.new(public.encode(), signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(InvalidToken):
        decode_token(f"{signing_input}.{_b64(signature)}", settings)


@pytest.mark.parametrize("missing", ["exp", "job_id", "jti"])
def test_a_token_without_a_required_claim_is_refused(missing: str) -> None:
    """exp, job_id and jti must all be there."""
    claims = _claims()
    del claims[missing]
    with pytest.raises(InvalidToken, match=missing):
        decode_token(_forge(claims), HS256)


@pytest.mark.parametrize("job_id", ["1", 1.0, True, [1], 0, -1, 2**63, 2**70], ids=repr)
def test_a_signed_token_whose_job_id_is_no_row_id_is_refused(job_id: Any) -> None:
    """A well-signed token whose job_id is not an int a BIGINT id can hold is refused."""
    with pytest.raises(InvalidToken, match="malformed claims"):
        decode_token(_forge(_claims(job_id=job_id)), HS256)


@pytest.mark.parametrize(
    "overrides",
    [{"job_id": None}, {"jti": 1}, {"jti": None}, {"sub": 7}, {"sub": ["alice"]}],
    ids=repr,
)
def test_a_signed_token_whose_uid_or_owner_is_no_str_is_refused(overrides: dict[str, Any]) -> None:
    """A null job id, or a uid or owner that is no str, is refused."""
    with pytest.raises(InvalidToken):
        decode_token(_forge(_claims(**overrides)), HS256)


def test_the_largest_row_id_is_taken() -> None:
    """2**63 - 1, the largest BIGINT, is a valid job id."""
    claims = decode_token(_forge(_claims(job_id=2**63 - 1)), HS256)
    assert claims.job_id == 2**63 - 1


@given(st.text())
def test_any_text_is_refused_as_invalid_token_only(text: str) -> None:
    """Whatever a client sends, verifying it raises InvalidToken and nothing else."""
    with pytest.raises(InvalidToken):
        decode_token(text, HS256)


# The verifier ---------------------------------------------------------------------------------


def _counting_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record each token the verifier decodes (checks the signature of)."""
    decoded: list[str] = []
    real = tokens.decode_token

    def decode(token: str, settings: Settings, **options: Any) -> Any:
        decoded.append(token)
        return real(token, settings, **options)

    monkeypatch.setattr(tokens, "decode_token", decode)
    return decoded


def test_the_verifier_checks_a_signature_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Polling with the same token checks its signature on the first poll only."""
    decoded = _counting_decodes(monkeypatch)
    verify = TokenVerifier(HS256)
    token = encode_token(9, UID, "carol", HS256)
    for _ in range(3):
        assert verify(token) == TokenClaims(job_id=9, uid=UID, owner="carol")
    assert decoded == [token]


def test_the_verifier_still_checks_the_expiry_of_a_remembered_token(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token remembered as verified is refused once its exp has passed."""
    verify = TokenVerifier(_settings(ASYNC_REQUEST_TOKEN_EXPIRATION=60))
    token = encode_token(1, UID, None, verify.settings)
    verify(token)
    later = time.time() + 61

    class Clock:
        @staticmethod
        def time() -> float:
            return later

    monkeypatch.setattr(tokens, "time", Clock)
    with pytest.raises(InvalidToken, match="expired"):
        verify(token)


def test_the_verifier_remembers_no_bad_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused token is checked again each time: refusals are not remembered."""
    decoded = _counting_decodes(monkeypatch)
    verify = TokenVerifier(HS256)
    for _ in range(2):
        with pytest.raises(InvalidToken):
            verify("not.a.token")
    assert decoded == ["not.a.token", "not.a.token"]


def test_the_verifier_remembers_at_most_size_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past its size, the least recently verified token is forgotten and checked again."""
    decoded = _counting_decodes(monkeypatch)
    verify = TokenVerifier(HS256, size=2)
    first, second, third = (encode_token(n, UID, None, HS256) for n in (1, 2, 3))
    for token in (first, second, third, first):
        verify(token)
    assert decoded == [first, second, third, first]


# The header -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["Bearer abc", "bearer abc", "BEARER abc", "abc", "  Bearer \t abc\t", "abc, abc", ",abc, ,"],
)
def test_the_token_is_taken_out_of_its_header(value: str) -> None:
    """Bearer in any case, or the bare token; HTTP's spaces and empty list elements ignored."""
    assert token_from_header(value) == "abc"


@pytest.mark.parametrize("value", [None, "", " ", "\t", ",", " , ,"])
def test_a_missing_token_is_refused(value: str | None) -> None:
    """No header, or one with nothing in it, is a missing token."""
    with pytest.raises(InvalidToken, match="missing token"):
        token_from_header(value)


@pytest.mark.parametrize("value", ["Bearer", "Basic abc", "Token abc", "Bearer a b", "a b"])
def test_only_bearer_or_a_bare_token_is_taken(value: str) -> None:
    """Another scheme, Bearer alone, or more words than Bearer and a token are refused."""
    with pytest.raises(InvalidToken, match="expected Bearer <token> or the bare token"):
        token_from_header(value)


@pytest.mark.parametrize("value", ["a, b", "b, a", "Bearer a, Bearer b", "a, a, b"])
def test_different_tokens_in_one_header_are_refused(value: str) -> None:
    """A header sent twice with two tokens is refused, whatever their order."""
    with pytest.raises(InvalidToken, match="several different tokens"):
        token_from_header(value)


def test_a_header_past_the_size_limit_is_refused_before_parsing() -> None:
    """MAX_TOKEN_LENGTH characters are read; one more is refused as too long."""
    assert token_from_header("x" * MAX_TOKEN_LENGTH) == "x" * MAX_TOKEN_LENGTH
    with pytest.raises(InvalidToken, match="token too long"):
        token_from_header("x" * (MAX_TOKEN_LENGTH + 1))


#: The characters of a JWT: base64url and the dots between its parts. The scheme's
#: name alone is no token (a JWT has two dots): refused, as the test above shows.
_JWT_TEXT = st.text(
    alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.",
    min_size=1,
    max_size=200,
).filter(lambda text: text.lower() != "bearer")


@given(token=_JWT_TEXT, bearer=st.booleans(), repeats=st.integers(min_value=1, max_value=3))
def test_any_token_comes_out_as_it_went_in(token: str, bearer: bool, repeats: int) -> None:
    """A JWT-shaped token, bare or after Bearer, repeated or not, is taken out unchanged."""
    element = f"Bearer {token}" if bearer else token
    assert token_from_header(", ".join([element] * repeats)) == token


# The app's signer -------------------------------------------------------------------

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
            assert INTERNALS.verify_token(app)(token).job_id == job_id


@pytest.mark.parametrize("owner", [None, "user-7"])
def test_a_token_is_the_one_jwt_encode_makes(
    app: Flask, monkeypatch: pytest.MonkeyPatch, owner: str | None
) -> None:
    """Byte for byte: the same header, claims, NumericDates and signature."""
    monkeypatch.setattr(tokens, "utcnow", lambda: _NOW)
    settings = INTERNALS.settings(app)
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
