"""The status endpoint and its tokens: 400 / 404 / 202 / 200, never a 500."""

from __future__ import annotations

import base64
import json
from datetime import datetime, timedelta, timezone
from typing import Any

import jwt
import pytest
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import scoped_session

from flask_async_request import Job, JobStatus
from flask_async_request.tokens import MAX_TOKEN_LENGTH
from tests import workers
from tests.conftest import SECRET, AppFactory, add_job, current_db, poll
from tests.test_config import rsa_pem_pair

INVALID = {"errors": [{"message": "Invalid token"}]}


def _claims(job: Job, **overrides: Any) -> dict[str, Any]:
    claims = {"job_id": job.id, "jti": job.uid, "exp": datetime.now(timezone.utc) + timedelta(1)}
    claims.update(overrides)
    return claims


def test_processed_job_answers_200_with_the_reply(client: Any) -> None:
    """A finished job answers 200 with status, status code and body."""
    job = Job.create_and_enqueue(workers.Reply, "created", '{"id": 7}')
    response = poll(client, job.token)
    assert response.status_code == 200
    assert response.json == {
        "status": "processed",
        "response": {"status_code": 201, "body": '{"id": 7}'},
    }


def test_failed_job_answers_200_with_the_error(client: Any) -> None:
    """A failed job answers 200 with status failed and the 500 error body."""
    job = Job.create_and_enqueue(workers.Boom, "nope")
    assert poll(client, job.token).json == {
        "status": "failed",
        "response": {"status_code": 500, "body": '{"error": "nope"}'},
    }


@pytest.mark.parametrize("status", [JobStatus.WAITING, JobStatus.PROCESSING])
def test_pending_job_answers_202(client: Any, status: JobStatus) -> None:
    """A waiting or processing job answers 202 with its status."""
    job = add_job(status=status)
    response = poll(client, job.token)
    assert response.status_code == 202
    assert response.json == {"status": status.value, "progress": None, "message": None}


def test_bare_token_is_accepted(client: Any) -> None:
    """The header may hold the token alone, without 'Bearer'."""
    job = add_job()
    response = client.get("/async_request/job", headers={"X-JOB-AUTHORIZATION": job.token})
    assert response.status_code == 202


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_scheme_is_case_insensitive(client: Any, scheme: str) -> None:
    """``Bearer`` is matched as HTTP matches scheme names, without regard to case."""
    job = add_job()
    headers = {"X-JOB-AUTHORIZATION": f" {scheme} \t {job.token} "}
    assert client.get("/async_request/job", headers=headers).status_code == 202


@pytest.mark.parametrize(
    "value", ["Basic {}", "Token {}", "Token whatever {}", "Bearer Bearer {}", "{} extra"]
)
def test_only_bearer_or_a_bare_token_is_accepted(client: Any, value: str) -> None:
    """Another scheme, or more words than ``Bearer <token>``, is 400, whatever the token."""
    job = add_job()
    response = client.get(
        "/async_request/job", headers={"X-JOB-AUTHORIZATION": value.format(job.token)}
    )
    assert response.status_code == 400
    assert response.json == {"errors": [{"message": "Invalid token"}]}


def test_the_same_token_twice_is_that_token(client: Any) -> None:
    """A token header sent twice with the same token (a proxy repeating it) is accepted."""
    job = add_job()
    headers = [("X-JOB-AUTHORIZATION", f"Bearer {job.token}"), ("X-JOB-AUTHORIZATION", job.token)]
    assert client.get("/async_request/job", headers=headers).status_code == 202


@pytest.mark.parametrize("order", [(0, 1), (1, 0)])
def test_two_different_tokens_are_refused(client: Any, order: tuple[int, int]) -> None:
    """Two token headers with different tokens are 400 in either order."""
    tokens = [add_job().token, add_job().token]
    headers = [("X-JOB-AUTHORIZATION", f"Bearer {tokens[i]}") for i in order]
    assert client.get("/async_request/job", headers=headers).status_code == 400
    joined = {"X-JOB-AUTHORIZATION": f"{tokens[0]}, {tokens[1]}"}
    assert client.delete("/async_request/job", headers=joined).status_code == 400


def test_header_key_is_configurable(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_HEADER_KEY names the header that carries the token."""
    app = make_app(ASYNC_REQUEST_HEADER_KEY="Authorization")
    with app.app_context():
        token = add_job().token
    client = app.test_client()
    assert poll(client, token, header="Authorization").status_code == 202
    assert poll(client, token).status_code == 400


def test_deleted_job_answers_404(app: Flask, session: scoped_session[Any], client: Any) -> None:
    """A valid token for a job that no longer exists answers 404."""
    job = add_job()
    token = job.token
    session.delete(job)
    session.commit()
    response = poll(client, token)
    assert response.status_code == 404
    assert response.json == {"errors": [{"message": "Job not found"}]}


def test_token_never_reads_a_later_job_with_the_same_id(
    app: Flask, session: scoped_session[Any], client: Any
) -> None:
    """If the id is reused by a new row, the old token does not reach it."""
    job = add_job()
    token = job.token
    job.uid = "0" * 32
    session.commit()
    assert poll(client, token).status_code == 404


@pytest.mark.parametrize(
    "header",
    [None, "", "Bearer", "Bearer ", "   ", "Bearer not-a-jwt", "a.b.c", "Bearer ....", "\t"],
)
def test_missing_or_malformed_token_answers_400(client: Any, header: str | None) -> None:
    """Missing and malformed tokens answer 400 Invalid token."""
    headers = {} if header is None else {"X-JOB-AUTHORIZATION": header}
    response = client.get("/async_request/job", headers=headers)
    assert response.status_code == 400
    assert response.json == INVALID


def test_tampered_token_answers_400(client: Any) -> None:
    """Changing the payload of a signed token breaks its signature."""
    job = add_job()
    header, payload, signature = job.token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
    claims["job_id"] += 1
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    response = poll(client, f"{header}.{forged}.{signature}")
    assert response.status_code == 400
    assert response.json == INVALID


def test_token_signed_with_another_key_answers_400(client: Any) -> None:
    """A token signed with a different secret is refused."""
    job = add_job()
    token = jwt.encode(_claims(job), "another-secret-that-is-long-enough-too", algorithm="HS256")
    assert poll(client, token).status_code == 400


def test_expired_token_answers_400(client: Any) -> None:
    """A token past its exp claim is refused."""
    job = add_job()
    token = jwt.encode(
        _claims(job, exp=datetime.now(timezone.utc) - timedelta(seconds=1)),
        SECRET,
        algorithm="HS256",
    )
    assert poll(client, token).status_code == 400


def test_token_expiration_setting_sets_exp(make_app: AppFactory) -> None:
    """ASYNC_REQUEST_TOKEN_EXPIRATION decides the exp claim."""
    app = make_app(ASYNC_REQUEST_TOKEN_EXPIRATION=90)
    with app.app_context():
        claims = jwt.decode(add_job().token, SECRET, algorithms=["HS256"])
    assert claims["exp"] - claims["iat"] == 90


def test_token_without_exp_answers_400(client: Any) -> None:
    """A signed token with no expiry is refused."""
    job = add_job()
    claims = _claims(job)
    del claims["exp"]
    assert poll(client, jwt.encode(claims, SECRET, algorithm="HS256")).status_code == 400


@pytest.mark.parametrize("job_id", ["1", 1.0, True, None, [1], 0, -1, 2**63, 2**70])
def test_token_with_a_bad_job_id_claim_answers_400(client: Any, job_id: Any) -> None:
    """A correctly signed token whose job_id is no valid row id is refused, not a 500."""
    job = add_job()
    token = jwt.encode(_claims(job, job_id=job_id), SECRET, algorithm="HS256")
    assert poll(client, token).status_code == 400


def test_alg_none_is_refused(client: Any) -> None:
    """An unsigned token (alg none) is refused."""
    job = add_job()
    # PyJWT's hints leave out None, the key that alg none requires.
    token = jwt.encode(_claims(job), None, algorithm="none")  # type: ignore[arg-type]
    assert poll(client, token).status_code == 400


def test_other_hmac_algorithm_is_refused(client: Any) -> None:
    """The algorithm is pinned: HS512 with the right key is still refused under HS256."""
    job = add_job()
    token = jwt.encode(_claims(job), SECRET, algorithm="HS512")
    assert poll(client, token).status_code == 400


def test_oversized_token_answers_400(client: Any) -> None:
    """Header values over the size limit are refused before any decoding."""
    job = add_job()
    padding = "x" * MAX_TOKEN_LENGTH
    token = jwt.encode(_claims(job, padding=padding), SECRET, algorithm="HS256")
    assert poll(client, token).status_code == 400


def _rs256_app(make_app: AppFactory, **extra: Any) -> tuple[Flask, str, str]:
    private, public = rsa_pem_pair()
    app = make_app(
        ASYNC_REQUEST_SIGN_ALGORITHM="RS256",
        ASYNC_REQUEST_ENCODE_KEY=private,
        ASYNC_REQUEST_DECODE_KEY=public,
        **extra,
    )
    return app, private, public


def test_rs256_round_trip(make_app: AppFactory) -> None:
    """RS256 tokens signed with the private key verify with the public key."""
    app, _, public = _rs256_app(make_app)
    with app.app_context():
        job = Job.create_and_enqueue(workers.Echo)
        token = job.token
    assert jwt.get_unverified_header(token)["alg"] == "RS256"
    jwt.decode(token, public, algorithms=["RS256"])
    assert poll(app.test_client(), token).status_code == 200


def test_rs256_decode_key_defaults_to_the_public_half(make_app: AppFactory) -> None:
    """With only the private key set, tokens still verify."""
    private, _ = rsa_pem_pair()
    app = make_app(ASYNC_REQUEST_SIGN_ALGORITHM="RS256", ASYNC_REQUEST_ENCODE_KEY=private)
    with app.app_context():
        token = add_job().token
    assert poll(app.test_client(), token).status_code == 202


def test_key_confusion_is_refused(make_app: AppFactory) -> None:
    """An HS256 token whose secret is the RS256 public key is refused."""
    app, _, public = _rs256_app(make_app)
    with app.app_context():
        job = add_job()
        header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
        claims = {"job_id": job.id, "jti": job.uid, "exp": 4102444800}
        payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=")
        signing_input = header + b"." + payload
        import hashlib
        import hmac

        signature = base64.urlsafe_b64encode(
            hmac.new(public.encode(), signing_input, hashlib.sha256).digest()
        ).rstrip(b"=")
        token = (signing_input + b"." + signature).decode()
    assert poll(app.test_client(), token).status_code == 400


def test_hs256_token_refused_by_rs256_app(make_app: AppFactory) -> None:
    """A token signed with SECRET_KEY under HS256 does not pass an RS256 app."""
    app, _, _ = _rs256_app(make_app)
    with app.app_context():
        token = jwt.encode(_claims(add_job()), SECRET, algorithm="HS256")
    assert poll(app.test_client(), token).status_code == 400


header_values = st.one_of(
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=255), max_size=5000),
    # Any text as a client's bytes would arrive; CR and LF cannot be sent in a header.
    st.text(max_size=200)
    .map(lambda s: s.encode("utf-8", "replace").decode("latin-1"))
    .filter(lambda s: "\r" not in s and "\n" not in s),
    st.builds(
        lambda a, b, c: f"Bearer {a}.{b}.{c}",
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/"),
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/"),
        st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"),
    ),
    st.builds(
        lambda claims: "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256"),
        st.dictionaries(
            st.sampled_from(["job_id", "jti", "exp", "iat", "nbf", "sub", "x"]),
            st.one_of(
                st.integers(min_value=-(2**70), max_value=2**70),
                st.text(max_size=20),
                st.none(),
                st.booleans(),
                st.floats(allow_nan=False, allow_infinity=False),
                st.lists(st.integers(), max_size=3),
            ),
        ),
    ),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=header_values)
def test_no_header_value_gives_a_500(client: Any, value: str) -> None:
    """Whatever the header holds, the answer is a 400, 404 or 202, never a 500."""
    add_job_once(client)
    response = client.get("/async_request/job", headers={"X-JOB-AUTHORIZATION": value})
    assert response.status_code in (400, 404)
    assert response.is_json


def add_job_once(client: Any) -> None:
    """Keep one job with id 1 in the table, so valid ids can hit a real row."""
    if current_db().session.get(Job, 1) is None:
        add_job()


def test_remembered_token_still_expires(make_app: AppFactory) -> None:
    """A token verified once is refused after its exp, though its check was remembered."""
    import time

    # exp is in whole seconds: 2 s leaves at least 1 s for the first poll.
    app = make_app(ASYNC_REQUEST_TOKEN_EXPIRATION=2)
    with app.app_context():
        token = add_job().token
    client = app.test_client()
    assert poll(client, token).status_code == 202
    time.sleep(2.1)
    assert poll(client, token).status_code == 400
