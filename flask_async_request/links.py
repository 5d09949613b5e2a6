"""Download links: short-lived signed names of one processed job's result.

A link is an itsdangerous timed signature, salted for links alone and keyed
from the secret that signs the app's tokens, over the job's id and uid, the
SHA-256 of its result's bytes, the identity the job is bound to and the
link's lifetime. It names those bytes and nothing else: the job's token is not
in it, and a result that is purged or replaced no longer matches it.
"""

from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, NamedTuple

import jwt
from itsdangerous import BadData, URLSafeTimedSerializer

from .exceptions import InvalidToken

if TYPE_CHECKING:
    from .config import Settings

#: Keeps a link's signature apart from any other the app makes with the same secret.
SALT = "flask-async-request.download-link"

#: A link signed less than this share of its lifetime ago (and at most
#: :data:`REUSE_AT_MOST` seconds ago) is handed out again for the same claims:
#: each poll of a processed job names a link, and signing one cost more than the
#: rest of the poll. A link is so valid for at least 95% of its lifetime.
REUSE_SHARE = 0.05
REUSE_AT_MOST = 30.0
#: The links kept for reuse, at most this many; the oldest half goes when full.
RECENT_LINKS = 4096
_recent: dict[tuple[str | bytes, LinkClaims, int], tuple[float, str]] = {}


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
    return _jwk(settings.algorithm, key)


@functools.lru_cache(maxsize=64)
def _jwk(algorithm: str, key: Any) -> str:
    jwk: str = jwt.get_algorithm_by_name(algorithm).to_jwk(key)
    return jwk


@functools.lru_cache(maxsize=64)
def _serializer_of(secret: str | bytes) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret, salt=SALT)


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return _serializer_of(_secret(settings))


def _now() -> float:
    """The current time in seconds, where the tests can move it."""
    return time.time()


def sign_link(settings: Settings, claims: LinkClaims, lifetime: int) -> str:
    """A link's signed part: ``claims``, valid for ``lifetime`` seconds from now.

    Or from a moment ago: the same claims signed less than :data:`REUSE_SHARE`
    of ``lifetime`` ago give the same link.
    """
    secret = _secret(settings)
    key = (secret, claims, lifetime)
    now = _now()
    recent = _recent.get(key)
    if recent is not None and 0 <= now - recent[0] < min(lifetime * REUSE_SHARE, REUSE_AT_MOST):
        return recent[1]
    payload = [claims.job_id, claims.uid, claims.sha256, claims.owner, lifetime]
    signed: str = _serializer_of(secret).dumps(payload)
    if len(_recent) >= RECENT_LINKS:
        for old in list(_recent)[: RECENT_LINKS // 2]:
            _recent.pop(old, None)
    _recent[key] = (now, signed)
    return signed


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
