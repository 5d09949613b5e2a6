"""Encoding and verification of job tokens (JWT)."""

from __future__ import annotations

import functools
import json
import re
import time
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, overload

import jwt
from jwt.utils import base64url_encode
from jwt.warnings import InsecureKeyLengthWarning

from .exceptions import InvalidToken
from .values import utcnow

if TYPE_CHECKING:
    from .config import Settings

_WHITESPACE = re.compile("[ \t]+")

#: Longer header values are refused before any parsing or signature check.
MAX_TOKEN_LENGTH = 4096


@dataclass(frozen=True)
class TokenClaims:
    """What a verified token says: which job, and which row of that id (its uid)."""

    job_id: int
    uid: str
    #: The identity the job belongs to, if it was created with one.
    owner: str | None = None


class TokenSigner:
    """Signs tokens for one app, its key prepared once.

    ``jwt.encode`` prepares the key again for every token (for an HMAC secret,
    checks that it is no PEM or SSH key), which costs more than the signature.
    Here PyJWT's algorithm object prepares it once and signs each token; the
    tokens are byte for byte those ``jwt.encode`` makes of the same claims.
    """

    def __init__(self, settings: Settings) -> None:
        self._algorithm = jwt.get_algorithm_by_name(settings.algorithm)
        self._encode_key = settings.encode_key
        #: Prepared at the first signature, when jwt.encode would first prepare it.
        self._key: Any = None
        self._expiration = settings.token_expiration
        header = {"typ": "JWT", "alg": settings.algorithm}
        self._header = base64url_encode(_compact(header, sort_keys=True)) + b"."

    def _prepared_key(self) -> Any:
        key = self._key
        if key is None:
            key = self._algorithm.prepare_key(self._encode_key)
            # As jwt.encode warns of a key too short for its algorithm.
            too_short = self._algorithm.check_key_length(key)
            if too_short:
                warnings.warn(too_short, InsecureKeyLengthWarning, stacklevel=3)
            self._key = key
        return key

    def __call__(self, job_id: int, uid: str, owner: str | None) -> str:
        """Sign a token for job ``job_id`` (row ``uid``), valid for the app's token expiration.

        :param owner: the identity the job is bound to, put in the token's ``sub``.
        """
        now = utcnow()
        claims: dict[str, object] = {
            "job_id": job_id,
            "jti": uid,
            # Whole seconds, as jwt.encode turns a datetime into a NumericDate
            # (``timegm(utctimetuple())``, the same for an aware time, at a fifth of the CPU).
            "iat": int(now.timestamp()),
            "exp": int((now + self._expiration).timestamp()),
        }
        if owner is not None:
            claims["sub"] = owner
        signing_input = self._header + base64url_encode(_compact(claims))
        signature = self._algorithm.sign(signing_input, self._prepared_key())
        return (signing_input + b"." + base64url_encode(signature)).decode()


def _compact(value: dict[str, Any], *, sort_keys: bool = False) -> bytes:
    """``value`` as JSON, as jwt.encode writes a header or a payload."""
    return json.dumps(value, separators=(",", ":"), sort_keys=sort_keys).encode()


def encode_token(job_id: int, uid: str, owner: str | None, settings: Settings) -> str:
    """Sign a token for job ``job_id`` (row ``uid``), valid for ``settings.token_expiration``.

    An app signs with its own :class:`TokenSigner`, which prepares its key once.

    :param owner: the identity the job is bound to, put in the token's ``sub``.
    """
    return TokenSigner(settings)(job_id, uid, owner)


def token_from_header(value: str | None) -> str:
    """Take the token out of a header value: ``Bearer <token>`` or the bare token.

    The scheme name is matched without regard to case, as HTTP's are; any other
    scheme (``Basic``, ``Token``) is refused. A header sent twice reaches the
    app as one value, the two joined by a comma (as a proxy may also join them):
    the same token repeated is that token, two different tokens are refused, so
    that the answer never depends on the order of the headers. A JWT never holds
    a comma.

    :raises InvalidToken: for a missing, empty, oversized or malformed value, or
        for several different tokens.
    """
    if not value:
        raise InvalidToken("missing token")
    if len(value) > MAX_TOKEN_LENGTH:
        raise InvalidToken("token too long")
    # Empty elements of a comma-separated list count for nothing (RFC 9110, 5.6.1).
    tokens = {_credential(element) for element in value.split(",") if element.strip(" \t")}
    if not tokens:
        raise InvalidToken("missing token")
    if len(tokens) > 1:
        raise InvalidToken("several different tokens")
    return tokens.pop()


def _credential(element: str) -> str:
    """The token of one ``Bearer <token>`` or bare ``<token>``."""
    # HTTP's whitespace is space and tab only (RFC 9110, 5.6.3).
    words = _WHITESPACE.split(element.strip(" \t"))
    if len(words) == 2 and words[0].lower() == "bearer":
        return words[1]
    if len(words) == 1 and words[0].lower() != "bearer":
        return words[0]
    raise InvalidToken("expected Bearer <token> or the bare token")


class TokenVerifier:
    """Verifies tokens for one app, remembering the ones it verified until they expire.

    A client polls with the same token many times; checking its signature once
    and its expiry on every poll saves most of the work. Only tokens that
    verified are remembered, at most ``size`` of them.
    """

    def __init__(self, settings: Settings, size: int = 4096) -> None:
        self.settings = settings
        self._verified = functools.lru_cache(maxsize=size)(self._verify)

    def _verify(self, token: str) -> tuple[TokenClaims, float]:
        return decode_token(token, self.settings, with_expiry=True)

    def __call__(self, token: str) -> TokenClaims:
        """The claims of ``token``.

        :raises InvalidToken: for any token that is malformed, tampered with or expired.
        """
        claims, expires = self._verified(token)
        if time.time() >= expires:
            raise InvalidToken("expired")
        return claims


@overload
def decode_token(token: str, settings: Settings) -> TokenClaims: ...
@overload
def decode_token(
    token: str, settings: Settings, *, with_expiry: Literal[True]
) -> tuple[TokenClaims, float]: ...
def decode_token(
    token: str, settings: Settings, *, with_expiry: bool = False
) -> TokenClaims | tuple[TokenClaims, float]:
    """Verify ``token`` with the configured algorithm and key, and return its claims.

    The algorithm is pinned to ``ASYNC_REQUEST_SIGN_ALGORITHM``: a token that
    names another one (``none``, or HS256 signed with an RS256 public key) is
    refused.

    :raises InvalidToken: for any token that is malformed, tampered with or expired.
    """
    try:
        claims = jwt.decode(
            token,
            settings.decode_key,
            algorithms=[settings.algorithm],
            options={"require": ["exp", "job_id", "jti"]},
        )
    except (jwt.InvalidTokenError, ValueError, TypeError) as e:
        raise InvalidToken(str(e)) from e
    job_id, uid, owner = claims["job_id"], claims["jti"], claims.get("sub")
    if (
        isinstance(job_id, bool)
        or not isinstance(job_id, int)
        # Out-of-range ids would overflow the database's BIGINT.
        or not 0 < job_id < 2**63
        or not isinstance(uid, str)
        or not (owner is None or isinstance(owner, str))
    ):
        raise InvalidToken("malformed claims")
    result = TokenClaims(job_id=job_id, uid=uid, owner=owner)
    return (result, float(claims["exp"])) if with_expiry else result
