"""Download links: short-lived signed names of one processed job's result.

A link is an itsdangerous timed signature, salted for links alone and keyed
from the secret that signs the app's tokens, over the job's id and uid, the
SHA-256 of its result's bytes, the identity the job is bound to and the
link's lifetime. It names those bytes and nothing else: the job's token is not
in it, and a result that is purged or replaced no longer matches it.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, NamedTuple

import jwt
from itsdangerous import BadData, URLSafeTimedSerializer

from .exceptions import InvalidToken

if TYPE_CHECKING:
    from .config import Settings

#: Keeps a link's signature apart from any other the app makes with the same secret.
SALT = "flask-async-request.download-link"


class LinkExpired(InvalidToken):
    """A download link was valid, and is past its lifetime."""


class LinkClaims(NamedTuple):
    """What a verified download link names."""

    job_id: int
    uid: str
    #: The SHA-256 of the result's bytes, in hex: the result url's ETag.
    sha256: str
    #: The identity the job is bound to, or ``None``.
    owner: str | None


def _secret(settings: Settings) -> str | bytes:
    """The secret that signs the app's tokens, as an HMAC can take it.

    An HMAC algorithm's key is that secret already. An RS, PS or ES algorithm's
    is a private key, whose JWK holds its private numbers: as secret as the key
    itself, and the same in every process.
    """
    key = settings.encode_key
    if isinstance(key, (str, bytes)):
        return key
    jwk: str = jwt.get_algorithm_by_name(settings.algorithm).to_jwk(key)
    return jwk


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_secret(settings), salt=SALT)


def _now() -> float:
    """The current time in seconds, where the tests can move it."""
    return time.time()


def sign_link(settings: Settings, claims: LinkClaims, lifetime: int) -> str:
    """A link's signed part: ``claims``, valid for ``lifetime`` seconds from now."""
    payload = [claims.job_id, claims.uid, claims.sha256, claims.owner, lifetime]
    return _serializer(settings).dumps(payload)


def verify_link(settings: Settings, signed: str) -> LinkClaims:
    """The claims of a link's signed part.

    :raises LinkExpired: the link's signature is good and its lifetime is over.
    :raises InvalidToken: the link is malformed, tampered with, or signed with
        another secret.
    """
    try:
        payload, signed_at = _serializer(settings).loads(signed, return_timestamp=True)
    except (BadData, ValueError, TypeError) as e:
        raise InvalidToken("invalid download link") from e
    if not (isinstance(payload, list) and len(payload) == 5):
        raise InvalidToken("malformed download link")
    job_id, uid, sha256, owner, lifetime = payload
    if (
        isinstance(job_id, bool)
        or not isinstance(job_id, int)
        or not 0 < job_id < 2**63
        or not isinstance(uid, str)
        or not isinstance(sha256, str)
        or not (owner is None or isinstance(owner, str))
        or isinstance(lifetime, bool)
        or not isinstance(lifetime, int)
    ):
        raise InvalidToken("malformed download link")
    if _now() >= signed_at.timestamp() + lifetime:
        raise LinkExpired("expired download link")
    return LinkClaims(job_id, uid, sha256, owner)
