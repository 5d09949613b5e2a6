"""links: download links, a signed, short-lived url of a processed job's result, with no token."""

from __future__ import annotations

import hashlib
import itertools
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask, current_app, request
from itsdangerous import URLSafeTimedSerializer

from flask_async_request import (
    AsyncRequest,
    InvalidToken,
    Job,
    JobStateError,
    JobStatus,
    Worker,
    download_url,
    links,
    results,
)
from flask_async_request.maintenance import retry_job
from flask_async_request.retention import purge_jobs
from flask_async_request.state import get_state
from tests import workers
from tests.conftest import AppFactory, add_job, json_of, poll
from tests.test_config import rsa_pem_pair

#: The bytes of ReturnChunks(5, 500): five chunks of 500 bytes, each of its index.
DATA = b"".join(bytes([i]) * 500 for i in range(5))

_RUNS = itertools.count()


class Changing(Worker):
    """Returns other bytes at each run: stored as bytes, or kept in the row as text."""

    def execute(self, stored: bool) -> Any:
        body = f"run {next(_RUNS)}"
        return (200, body.encode()) if stored else (200, body)


@pytest.fixture
def stored(app: Flask, monkeypatch: pytest.MonkeyPatch) -> Job:
    """A processed job whose 2,500-byte result spans three chunks of the result store."""
    monkeypatch.setattr(results, "CHUNK_SIZE", 1000)
    return Job.create_and_enqueue(workers.ReturnChunks, 5, 500)


def _link(job: Job, **kwargs: Any) -> str:
    with current_app.test_request_context():
        return download_url(job, **kwargs)


def test_envelope_has_a_download_href_that_round_trips(client: Any, stored: Job) -> None:
    """The envelope names a download link; it serves the bytes, identical, with no token."""
    response = json_of(poll(client, stored.token))["response"]
    href = response["download_href"]
    assert href.startswith("http://localhost/async_request/download/")
    assert stored.token not in href
    answer = client.get(href)
    assert answer.status_code == 200
    assert answer.data == DATA
    assert answer.headers["ETag"] == f'"{hashlib.sha256(DATA).hexdigest()}"'
    assert answer.headers["Content-Length"] == "2500"


def test_download_url_of_a_reply_kept_in_the_row(app: Flask, client: Any) -> None:
    """download_url names a text reply kept in the row too, served as the result url does."""
    job = Job.create_and_enqueue(workers.ReturnValue, [200, "été", "text/csv; charset=utf-8"])
    answer = client.get(_link(job))
    assert answer.status_code == 200
    assert answer.data == "été".encode()
    assert answer.headers["Content-Type"] == "text/csv; charset=utf-8"
    assert "download_href" not in json_of(poll(client, job.token))["response"]


def test_head_range_and_304_on_a_link(client: Any, stored: Job) -> None:
    """A link answers HEAD, a single range across chunks, If-Range and If-None-Match."""
    href = _link(stored)
    head = client.head(href)
    assert (head.status_code, head.data) == (200, b"")
    assert head.headers["Content-Length"] == "2500"
    assert head.headers["Accept-Ranges"] == "bytes"
    part = client.get(href, headers={"Range": "bytes=990-1010", "If-Range": head.headers["ETag"]})
    assert part.status_code == 206
    assert part.data == DATA[990:1011]
    assert part.headers["Content-Range"] == "bytes 990-1010/2500"
    assert client.get(href, headers={"Range": "bytes=2500-"}).status_code == 416
    cached = client.get(href, headers={"If-None-Match": head.headers["ETag"]})
    assert (cached.status_code, cached.data) == (304, b"")


def test_a_link_expires_with_410(
    app: Flask, client: Any, stored: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its lifetime a link answers 410 Gone; within it, 200."""
    href = _link(stored, expires_in=timedelta(seconds=60))
    signed_at = links._now()
    monkeypatch.setattr(links, "_now", lambda: signed_at + 58)
    assert client.get(href).status_code == 200
    monkeypatch.setattr(links, "_now", lambda: signed_at + 61)
    answer = client.get(href)
    assert answer.status_code == 410
    assert answer.json == {
        "errors": [{"message": "The download link has expired; ask for a new one."}]
    }


def test_the_lifetime_is_the_setting(make_app: AppFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without expires_in a link lives ASYNC_REQUEST_LINK_EXPIRATION."""
    app = make_app(ASYNC_REQUEST_LINK_EXPIRATION=30)
    with app.app_context():
        job = Job.create_and_enqueue(workers.ReturnBytes)
        href = _link(job)
    signed_at = links._now()
    client = app.test_client()
    monkeypatch.setattr(links, "_now", lambda: signed_at + 28)
    assert client.get(href).status_code == 200
    monkeypatch.setattr(links, "_now", lambda: signed_at + 31)
    assert client.get(href).status_code == 410


@pytest.mark.parametrize("expires_in", [0, -5, timedelta(0), 0.5])
def test_a_lifetime_under_a_second_is_refused(stored: Job, expires_in: Any) -> None:
    """expires_in must be a second or more."""
    with pytest.raises(ValueError, match="expires_in"):
        _link(stored, expires_in=expires_in)


def test_download_url_of_a_pending_job_is_refused(app: Flask) -> None:
    """A job that is not processed has no result to link to."""
    job = add_job()
    with pytest.raises(JobStateError) as caught:
        _link(job)
    assert caught.value.status == JobStatus.WAITING.value


def test_a_tampered_or_malformed_link_is_404(client: Any, stored: Job) -> None:
    """Any change to the signed part, or a made-up one, is 404 and never a 5xx."""
    href = _link(stored)
    base, _, signed = href.rpartition("/")
    payload, timestamp, signature = signed.rsplit(".", 2)
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    forged = URLSafeTimedSerializer("another secret", salt=links.SALT)
    candidates = [
        f"{payload}.{timestamp}.{flipped}",
        f"{payload[:-1]}.{timestamp}.{signature}",
        f"{payload}.AAAAAA.{signature}",
        "x",
        "..",
        "a" * 5000,
        forged.dumps([stored.id, stored.uid, hashlib.sha256(DATA).hexdigest(), None, 300]),
    ]
    for candidate in candidates:
        answer = client.get(f"{base}/{candidate}")
        assert answer.status_code == 404, candidate
        assert answer.json == {"errors": [{"message": "Not found"}]}


def test_a_link_signed_for_another_purpose_is_404(app: Flask, client: Any, stored: Job) -> None:
    """A well-signed payload of the wrong shape, or salted otherwise, is 404."""
    secret = app.config["SECRET_KEY"]
    serializer = URLSafeTimedSerializer(secret, salt=links.SALT)
    other_salt = URLSafeTimedSerializer(secret, salt="another purpose")
    good = [stored.id, stored.uid, hashlib.sha256(DATA).hexdigest(), None, 300]
    for signed in (
        serializer.dumps({"job_id": stored.id}),
        serializer.dumps([True, stored.uid, good[2], None, 300]),
        serializer.dumps([stored.id, stored.uid, good[2], None, "300"]),
        other_salt.dumps(good),
    ):
        assert client.get(f"/async_request/download/{signed}").status_code == 404
    assert client.get(f"/async_request/download/{serializer.dumps(good)}").status_code == 200


def test_an_rs256_app_signs_links_with_its_private_key(make_app: AppFactory) -> None:
    """With RS256 a link is keyed from the private key: good here, 404 under another key."""
    private, _ = rsa_pem_pair()
    app = make_app(ASYNC_REQUEST_SIGN_ALGORITHM="RS256", ASYNC_REQUEST_ENCODE_KEY=private)
    with app.app_context():
        job = Job.create_and_enqueue(workers.ReturnBytes)
        href = _link(job)
    assert app.test_client().get(href).data == b"raw"
    signed = href.rpartition("/")[2]
    other = make_app(
        ASYNC_REQUEST_SIGN_ALGORITHM="RS256", ASYNC_REQUEST_ENCODE_KEY=rsa_pem_pair()[0]
    )
    with other.app_context(), pytest.raises(InvalidToken):
        links.verify_link(get_state().settings, signed)


@pytest.fixture
def owned_app(make_app: AppFactory) -> Flask:
    """An app whose identity is the X-User header."""
    extension = AsyncRequest()
    app = make_app(extension=extension)

    @extension.identity_loader
    def current_user() -> str | None:
        return request.headers.get("X-User")

    return app


@pytest.mark.parametrize("other", ["bob", None])
def test_a_link_is_bound_to_the_jobs_owner(owned_app: Flask, other: str | None) -> None:
    """The owner's link serves its owner; another identity, or none, gets 404."""
    client = owned_app.test_client()
    with owned_app.test_request_context(headers={"X-User": "alice"}):
        job = Job.create_and_enqueue(workers.ReturnBytes)
        href = download_url(job)
    assert client.get(href, headers={"X-User": "alice"}).data == b"raw"
    headers = {} if other is None else {"X-User": other}
    assert client.get(href, headers=headers).status_code == 404


def test_a_link_is_404_once_the_job_is_purged(app: Flask, client: Any, stored: Job) -> None:
    """A purged job's link, and one of a later job with the same id, are 404."""
    href, job_id = _link(stored), stored.id
    assert purge_jobs(timedelta(0)) == 1
    get_state().db.session.expunge_all()
    assert client.get(href).status_code == 404
    # SQLite reuses the id of the deleted row: the new job is another uid.
    again = Job.create_and_enqueue(workers.ReturnChunks, 5, 500)
    assert again.id == job_id
    assert client.get(href).status_code == 404
    assert client.get(_link(again)).data == DATA


@pytest.mark.parametrize("kept_in_the_store", [True, False])
def test_a_link_is_404_once_its_result_is_replaced(
    app: Flask, client: Any, kept_in_the_store: bool
) -> None:
    """A job run again with another result: the old link is 404, a new one serves it."""
    job = Job.create_and_enqueue(Changing, kept_in_the_store)
    old = _link(job)
    first = client.get(old).data
    session = get_state().db.session
    session.execute(sa.update(Job).where(Job.id == job.id).values(status=JobStatus.FAILED))
    session.commit()
    retry_job(job.id)
    assert client.get(old).status_code == 404
    new = client.get(_link(job))
    assert new.status_code == 200
    assert new.data != first


def test_polls_in_a_row_hand_out_one_link_signed_once(
    client: Any, stored: Job, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A processed job polled again names the link signed a moment ago; later, a new one."""
    signed: list[Any] = []
    dumps = URLSafeTimedSerializer.dumps

    def counting(serializer: URLSafeTimedSerializer, obj: Any, salt: Any = None) -> Any:
        signed.append(obj)
        return dumps(serializer, obj, salt)

    monkeypatch.setattr(URLSafeTimedSerializer, "dumps", counting)
    hrefs = {json_of(poll(client, stored.token))["response"]["download_href"] for _ in range(3)}
    assert (len(hrefs), len(signed)) == (1, 1)
    # Past a twentieth of its lifetime (5 minutes by default), a link is signed afresh.
    now = links._now()
    monkeypatch.setattr(links, "_now", lambda: now + 300 * links.REUSE_SHARE + 1)
    json_of(poll(client, stored.token))
    assert len(signed) == 2


def test_a_reused_link_still_names_its_claims_only(app: Flask, client: Any) -> None:
    """Reuse is by the claims: another job's link, or another lifetime's, is its own.

    (A new result of the same job is another SHA-256: see the test of a replaced result.)
    """
    first = Job.create_and_enqueue(Changing, True)
    second = Job.create_and_enqueue(Changing, True)
    assert _link(first) != _link(second)
    assert _link(first) != _link(first, expires_in=60)
    assert client.get(_link(second)).data != client.get(_link(first)).data
