"""Ed25519 keys for model artifacts: generation, key ids, trusted-key directories.

A key id is ``sha256:<hex>`` of the 32 raw public-key bytes, so the same key has
the same id whatever the PEM file is called.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

log = logging.getLogger("ml_service.model")

PUBLIC_KEY_SUFFIX = ".pub"
_MAX_KEY_BYTES = 64 * 1024


def key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def generate_keypair(out_dir: Path, stem: str = "model-signing") -> tuple[Path, Path, str]:
    """Write ``<stem>.key`` (PKCS#8 PEM, mode 0600) and ``<stem>.pub``; never overwrite."""
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{stem}.key"
    public_path = out_dir / f"{stem}{PUBLIC_KEY_SUFFIX}"
    for path in (private_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} already exists; refusing to overwrite a key")
    private_key = Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public_pem = private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # O_EXCL + explicit mode: the private key is never readable by others, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(private_pem)
    fd = os.open(public_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(public_pem)
    return private_path, public_path, key_id(private_key.public_key())


def load_private_key(path: Path, passphrase: bytes | None = None) -> Ed25519PrivateKey:
    mode = path.stat().st_mode & 0o077
    if mode:
        raise PermissionError(
            f"signing key {path} is accessible by group/others (mode {oct(mode)}); chmod 600 it"
        )
    key = serialization.load_pem_private_key(path.read_bytes(), password=passphrase)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(data: bytes) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(data)
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 public key")
    return key


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys in a directory (``*.pub``), indexed by key id."""

    keys: dict[str, Ed25519PublicKey]
    # Fingerprint of the directory state, to reload only when it changes.
    stamp: tuple[tuple[str, int, int], ...]

    def verify(self, kid: str, signature: bytes, message: bytes) -> bool:
        key = self.keys.get(kid)
        if key is None:
            return False
        try:
            key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def _read_key_file(path: Path) -> bytes:
    # Non-blocking and regular files only: a FIFO among the keys must not hang the loader.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError("not a regular file")
        data = fh.read(_MAX_KEY_BYTES + 1)
    if len(data) > _MAX_KEY_BYTES:
        raise ValueError(f"larger than {_MAX_KEY_BYTES} bytes")
    return data


def _dir_stamp(directory: Path) -> tuple[tuple[str, int, int], ...]:
    try:
        entries = sorted(directory.glob(f"*{PUBLIC_KEY_SUFFIX}"))
    except OSError:
        return ()
    stamp = []
    for path in entries:
        try:
            st = path.stat()
        except OSError:
            continue
        stamp.append((path.name, st.st_mtime_ns, st.st_size))
    return tuple(stamp)


def load_trusted_keys(directory: Path, previous: TrustedKeys | None = None) -> TrustedKeys:
    """Load every ``*.pub`` Ed25519 key; unreadable or non-Ed25519 files are logged and skipped."""
    stamp = _dir_stamp(directory)
    if previous is not None and previous.stamp == stamp:
        return previous
    keys: dict[str, Ed25519PublicKey] = {}
    for name, _, _ in stamp:
        path = directory / name
        try:
            key = load_public_key(_read_key_file(path))
        except (OSError, ValueError) as exc:
            log.warning("ignoring trusted key file %s: %s", path, exc)
            continue
        keys[key_id(key)] = key
    if not keys:
        log.error("no usable trusted public key in %s: every model will be refused", directory)
    return TrustedKeys(keys=keys, stamp=stamp)
