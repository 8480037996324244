"""JWT access tokens: ES256 keys with key ids, issuing and strict verification.

Why ES256 and not HS256: the API only needs the private key to *sign*; every
other party that checks tokens (a second service, the smoke test, an operator)
gets the public key only, so a leaked verification key cannot mint tokens.
ES256 is the asymmetric algorithm every JWT library and client has. The
library is PyJWT on ``cryptography`` (python-jose pulled in ``ecdsa``, whose
timing side channel CVE-2024-23342 has no fix). The key id (``kid``) is derived
from the public key, so the same key always has the same id and rotation is:
generate a new pair, point the signing key at it, keep the old ``.pub`` in the
verification directory for one token lifetime, then delete it.

Every token carries ``gen``, the user's token generation from the users file
(a random value replaced by every password or role change): a token whose
generation is not the user's current one is stale, even one issued in the same
second as the change.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .settings import ROLES, ConfigError, Settings

ALGORITHM = "ES256"
ALLOWED_ALGORITHMS = frozenset({ALGORITHM})
_CACHE_MAX = 8192


class TokenError(Exception):
    """A token was refused; ``reason`` is a short label (metric label, audit detail)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Claims:
    sub: str
    role: str
    jti: str
    iat: int
    nbf: int
    exp: int
    # The user's token generation at issue; None only in tokens minted before it existed.
    gen: str | None = None


# PyJWT exception -> reason (most specific first: several derive from others).
_REASONS: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "expired"),
    (jwt.ImmatureSignatureError, "not_yet_valid"),
    (jwt.InvalidAudienceError, "bad_audience"),
    (jwt.InvalidIssuerError, "bad_issuer"),
    (jwt.MissingRequiredClaimError, "missing_claim"),
    (jwt.InvalidSignatureError, "bad_signature"),
    (jwt.InvalidAlgorithmError, "bad_algorithm"),
    (jwt.DecodeError, "malformed"),
)


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    der = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()[:12]).decode().rstrip("=")


def generate_keypair(directory: Path) -> tuple[str, Path, Path]:
    """Write ``<kid>.key`` (0600) and ``<kid>.pub`` into ``directory``; return (kid, key, pub)."""
    directory.mkdir(parents=True, exist_ok=True)
    private = ec.generate_private_key(ec.SECP256R1())
    kid = key_id(private.public_key())
    key_path = directory / f"{kid}.key"
    pub_path = directory / f"{kid}.pub"
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return kid, key_path, pub_path


def _load_private(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"ML_SERVICE_JWT_SIGNING_KEY_FILE: {path} is not a readable, unencrypted PEM key "
            "(create one with `python -m ml_service keys generate DIR`)"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError(
            f"ML_SERVICE_JWT_SIGNING_KEY_FILE: {path} must be an EC P-256 key (ES256)"
        )
    return key


def _load_public(path: Path) -> ec.EllipticCurvePublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"ML_SERVICE_JWT_VERIFY_KEYS_DIR: {path} is not a PEM public key"
        ) from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ConfigError(f"ML_SERVICE_JWT_VERIFY_KEYS_DIR: {path} must be an EC P-256 key")
    return key


class TokenService:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        private = _load_private(settings.jwt_signing_key_file)
        self.signing_kid = key_id(private.public_key())
        self._signing_key = private
        self._verify_keys: dict[str, ec.EllipticCurvePublicKey] = {
            self.signing_kid: private.public_key()
        }
        if settings.jwt_verify_keys_dir is not None:
            for pub in sorted(settings.jwt_verify_keys_dir.glob("*.pub")):
                public = _load_public(pub)
                self._verify_keys[key_id(public)] = public
        self._options: jwt.types.Options = {
            "require": ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"],
        }
        # Key of the keyed hash that stands in the audit log for a login name that is not a
        # valid user name (it may be a password typed into the wrong field); derived from the
        # signing key so every worker and host of one deployment writes the same value.
        der = private.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self.name_key = hashlib.sha256(b"ml-service audit name\0" + der).digest()
        # token string -> claims, for tokens whose signature and claims already checked out;
        # time-based claims and the denylist are still checked on every use.
        self._cache: dict[str, Claims] = {}

    @property
    def key_ids(self) -> list[str]:
        return sorted(self._verify_keys)

    def issue(self, username: str, role: str, generation: str) -> tuple[str, Claims]:
        now = int(time.time())
        claims = Claims(
            sub=username,
            role=role,
            jti=secrets.token_urlsafe(16),
            iat=now,
            nbf=now,
            exp=now + self._settings.access_token_ttl_seconds,
            gen=generation,
        )
        payload = {
            "iss": self._settings.jwt_issuer,
            "aud": self._settings.jwt_audience,
            "sub": claims.sub,
            "role": claims.role,
            "jti": claims.jti,
            "iat": claims.iat,
            "nbf": claims.nbf,
            "exp": claims.exp,
            "gen": claims.gen,
        }
        token = jwt.encode(
            payload, self._signing_key, algorithm=ALGORITHM, headers={"kid": self.signing_kid}
        )
        return token, claims

    def verify(self, token: str) -> Claims:
        now = time.time()
        leeway = self._settings.jwt_leeway_seconds
        cached = self._cache.get(token)
        if cached is not None:
            if now > cached.exp + leeway:
                self._cache.pop(token, None)
                raise TokenError("expired")
            return cached
        claims = self._verify_uncached(token)
        if now + leeway < claims.nbf:
            raise TokenError("not_yet_valid")
        if len(self._cache) >= _CACHE_MAX:
            self._cache.clear()
        self._cache[token] = claims
        return claims

    def _verify_uncached(self, token: str) -> Claims:
        if len(token) > self._settings.max_token_bytes:
            raise TokenError("oversized")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.DecodeError:
            raise TokenError("malformed") from None
        except jwt.InvalidTokenError:  # PyJWT refuses a header whose kid is not a string
            raise TokenError("unknown_kid") from None
        # The allow-list is checked on the header before any key is chosen: "none", HS256
        # with the public key as secret and the like never reach a verifier.
        if header.get("alg") not in ALLOWED_ALGORITHMS:
            raise TokenError("bad_algorithm")
        kid = header.get("kid")
        key = self._verify_keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise TokenError("unknown_kid")
        try:
            payload = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._settings.jwt_audience,
                issuer=self._settings.jwt_issuer,
                leeway=self._settings.jwt_leeway_seconds,
                options=self._options,
            )
        except jwt.InvalidTokenError as exc:
            reason = next((r for cls, r in _REASONS if isinstance(exc, cls)), "bad_claims")
            raise TokenError(reason) from None
        except (ValueError, TypeError):
            raise TokenError("malformed") from None
        return _claims_from(payload, self._settings.jwt_leeway_seconds)


def _claims_from(payload: dict[str, object], leeway: int) -> Claims:
    texts: dict[str, str] = {}
    numbers: dict[str, int] = {}
    for name in ("sub", "role", "jti"):
        text = payload.get(name)
        if not isinstance(text, str) or not text or len(text) > 128:
            raise TokenError("missing_claim")
        texts[name] = text
    for name in ("iat", "nbf", "exp"):
        number = payload.get(name)
        if not isinstance(number, int) or isinstance(number, bool):
            raise TokenError("bad_claims")
        numbers[name] = number
    gen = payload.get("gen")
    if gen is not None and (not isinstance(gen, str) or not gen or len(gen) > 64):
        raise TokenError("bad_claims")
    if texts["role"] not in ROLES:
        raise TokenError("bad_claims")
    if numbers["iat"] > time.time() + leeway:
        raise TokenError("not_yet_valid")
    return Claims(**texts, **numbers, gen=gen)  # type: ignore[arg-type]
