"""The signed model artifact: layout, writing and verification.

Layout (``<model_dir>/<name>/<version>/``)::

    model.joblib     the fitted estimator (joblib pickle; loaded only after verification)
    metadata.json    version, trained_at, data hash, params, metrics, drift statistics, ...
    manifest.json    {"format_version", "name", "version", "signing_key_id",
                      "files": {file: {"sha256", "size"}}}
    manifest.sig     {"format_version", "algorithm": "Ed25519", "key_id", "signature": base64}

``manifest.sig`` is a detached Ed25519 signature over the exact bytes of
``manifest.json``. Verification reads every file once into memory, checks the
signature and each hash on those bytes, and hands the same bytes to the
unpickler, so a file swapped between check and load cannot slip through.

Until the signature checks out, everything in the directory is hostile: the
directory and each file are opened relative to the directory's descriptor,
without following symbolic links, non-blocking (a FIFO cannot hang the worker),
and only regular files are read, each up to a size cap (64 KiB for the manifest
and the signature). Any exception while verifying refuses the version
(``verification_error``) instead of escaping to the caller.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import shutil
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from .errors import ModelIntegrityError
from .signing import TrustedKeys, key_id

MODEL_FILE = "model.joblib"
METADATA_FILE = "metadata.json"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
MANIFEST_FORMAT_VERSION = 1
SIGNATURE_ALGORITHM = "Ed25519"
REQUIRED_FILES = (MODEL_FILE, METADATA_FILE)
MAX_FILE_BYTES = 256 * 1024 * 1024
MAX_MANIFEST_BYTES = 64 * 1024
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC

# Versions are UTC timestamps, second resolution, with an optional ".N" suffix when
# two versions are written within the same second: 20261127T153000Z, 20261127T153000Z.1
VERSION_RE = re.compile(r"^(\d{8}T\d{6}Z)(?:\.([1-9]\d{0,5}))?$")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
FILE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# Stable reason tokens (metric label values, audit records).
R_MISSING_MANIFEST = "missing_manifest"
R_MISSING_SIGNATURE = "missing_signature"
R_BAD_SIGNATURE_FORMAT = "malformed_signature"
R_UNTRUSTED_KEY = "untrusted_key"
R_BAD_SIGNATURE = "bad_signature"
R_BAD_MANIFEST = "malformed_manifest"
R_IDENTITY = "manifest_identity_mismatch"
R_MISSING_FILE = "missing_file"
R_HASH_MISMATCH = "hash_mismatch"
R_UNEXPECTED_FILE = "unexpected_file"
R_BAD_METADATA = "malformed_metadata"
R_LOAD_FAILED = "load_failed"
R_NOT_A_DIRECTORY = "missing_directory"
R_VERIFY_ERROR = "verification_error"


def is_valid_version(version: str) -> bool:
    return VERSION_RE.fullmatch(version) is not None


def version_sort_key(version: str) -> tuple[str, int]:
    match = VERSION_RE.fullmatch(version)
    if match is None:
        raise ValueError(f"invalid model version {version!r}")
    return match.group(1), int(match.group(2) or 0)


def new_version(name_dir: Path, now: datetime | None = None) -> str:
    """A fresh version for ``name_dir``: the UTC time, suffixed if that second is taken."""
    base = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    version, n = base, 0
    while (name_dir / version).exists():
        n += 1
        version = f"{base}.{n}"
    return version


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def write_artifact(
    model_dir: Path,
    name: str,
    files: dict[str, bytes],
    private_key: Ed25519PrivateKey,
    version: str | None = None,
) -> Path:
    """Write a signed version directory atomically (temp dir + rename); return its path.

    ``files`` must contain ``model.joblib`` and ``metadata.json``.
    """
    if NAME_RE.fullmatch(name) is None:
        raise ValueError(f"invalid model name {name!r} (lowercase letters, digits, - and _)")
    for required in REQUIRED_FILES:
        if required not in files:
            raise ValueError(f"artifact needs {required}")
    for file_name in files:
        if FILE_NAME_RE.fullmatch(file_name) is None or file_name in (
            MANIFEST_FILE,
            SIGNATURE_FILE,
        ):
            raise ValueError(f"invalid artifact file name {file_name!r}")
    name_dir = model_dir / name
    name_dir.mkdir(parents=True, exist_ok=True)
    version = version or new_version(name_dir)
    if not is_valid_version(version):
        raise ValueError(f"invalid model version {version!r}")
    kid = key_id(private_key.public_key())
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "name": name,
        "version": version,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "signing_key_id": kid,
        "files": {
            file_name: {"sha256": sha256_hex(data), "size": len(data)}
            for file_name, data in sorted(files.items())
        },
    }
    manifest_bytes = canonical_json(manifest)
    signature = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "algorithm": SIGNATURE_ALGORITHM,
        "key_id": kid,
        "signature": base64.b64encode(private_key.sign(manifest_bytes)).decode(),
    }
    tmp_dir = name_dir / f".tmp-{version}-{secrets.token_hex(4)}"
    tmp_dir.mkdir(mode=0o755)
    try:
        for file_name, data in [
            *files.items(),
            (MANIFEST_FILE, manifest_bytes),
            (SIGNATURE_FILE, canonical_json(signature)),
        ]:
            path = tmp_dir / file_name
            with open(path, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            path.chmod(0o644)
        final = name_dir / version
        # rename(2) of a directory fails if the target exists: no silent overwrite.
        os.rename(tmp_dir, final)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise
    return final


@dataclass(frozen=True)
class VerifiedArtifact:
    """An artifact whose signature and hashes checked out; bytes held in memory."""

    name: str
    version: str
    path: Path
    key_id: str
    manifest: dict[str, Any]
    metadata: dict[str, Any]
    files: dict[str, bytes] = field(repr=False)
    # manifest.json and manifest.sig exactly as read: what an import copies, so the copy is
    # the bytes that were verified, not a second read of a directory someone else can write.
    signed: dict[str, bytes] = field(default_factory=dict, repr=False)

    @property
    def model_bytes(self) -> bytes:
        return self.files[MODEL_FILE]

    @property
    def model_sha256(self) -> str:
        return str(self.manifest["files"][MODEL_FILE]["sha256"])

    def file_hashes(self) -> dict[str, str]:
        return {n: str(e["sha256"]) for n, e in self.manifest["files"].items()}


class UnsafeFile(OSError):
    """Not a regular file, or larger than its cap: refused without reading it."""


def _read_limited(dir_fd: int, name: str, limit: int = MAX_FILE_BYTES) -> bytes:
    """Read the regular file ``name`` of the directory ``dir_fd``: no symlink, no FIFO or
    device (opened non-blocking, so opening one cannot hang), at most ``limit`` bytes."""
    fd = os.open(name, _OPEN_FLAGS, dir_fd=dir_fd)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeFile(f"{name} is not a regular file")
        if st.st_size > limit:
            raise UnsafeFile(f"{name} larger than {limit} bytes")
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise UnsafeFile(f"{name} larger than {limit} bytes")
    return data


def verify_artifact(
    version_dir: Path, name: str, version: str, trusted: TrustedKeys
) -> VerifiedArtifact:
    """Check signature, identity and every file hash; raise ModelIntegrityError otherwise."""
    try:
        dir_fd = os.open(version_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ModelIntegrityError(
            version,
            R_NOT_A_DIRECTORY,
            f"{version_dir} is not a directory (symbolic links are not followed): {exc.strerror}",
        ) from None
    try:
        return _verify_in(dir_fd, version_dir, name, version, trusted)
    except ModelIntegrityError:
        raise
    except Exception as exc:
        # Hostile bytes (deep nesting, odd types, ...) refuse this version; they must never
        # crash or stall the worker that looked at them.
        raise ModelIntegrityError(
            version, R_VERIFY_ERROR, f"verification failed: {exc.__class__.__name__}"
        ) from None
    finally:
        os.close(dir_fd)


def _verify_in(
    dir_fd: int, version_dir: Path, name: str, version: str, trusted: TrustedKeys
) -> VerifiedArtifact:
    def fail(reason: str, detail: str) -> ModelIntegrityError:
        return ModelIntegrityError(version, reason, detail)

    try:
        manifest_bytes = _read_limited(dir_fd, MANIFEST_FILE, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise fail(R_MISSING_MANIFEST, f"{MANIFEST_FILE} is missing") from None
    except OSError as exc:
        raise fail(R_MISSING_MANIFEST, f"{MANIFEST_FILE} unreadable: {exc}") from None
    try:
        sig_bytes = _read_limited(dir_fd, SIGNATURE_FILE, MAX_MANIFEST_BYTES)
    except FileNotFoundError:
        raise fail(R_MISSING_SIGNATURE, f"{SIGNATURE_FILE} is missing") from None
    except OSError as exc:
        raise fail(R_MISSING_SIGNATURE, f"{SIGNATURE_FILE} unreadable: {exc}") from None

    try:
        sig_doc = json.loads(sig_bytes)
        if not isinstance(sig_doc, dict):
            raise ValueError("not an object")
        if sig_doc.get("algorithm") != SIGNATURE_ALGORITHM:
            raise ValueError(f"algorithm must be {SIGNATURE_ALGORITHM}")
        kid = sig_doc["key_id"]
        if not isinstance(kid, str):
            raise ValueError("key_id must be a string")
        signature = base64.b64decode(sig_doc["signature"], validate=True)
    except (ValueError, KeyError, TypeError, RecursionError, binascii.Error) as exc:
        raise fail(R_BAD_SIGNATURE_FORMAT, f"{SIGNATURE_FILE}: {exc}") from None
    if kid not in trusted.keys:
        raise fail(R_UNTRUSTED_KEY, f"signed by key {kid}, which is not in the trusted keys")
    if not trusted.verify(kid, signature, manifest_bytes):
        raise fail(R_BAD_SIGNATURE, f"signature does not match {MANIFEST_FILE} for key {kid}")

    # From here on the manifest is authentic; malformed content means a signing-side bug.
    try:
        manifest = json.loads(manifest_bytes)
        if manifest.get("format_version") != MANIFEST_FORMAT_VERSION:
            raise ValueError(f"unsupported format_version {manifest.get('format_version')!r}")
        entries = manifest["files"]
        if not isinstance(entries, dict):
            raise ValueError("files must be an object")
        expected: dict[str, str] = {}
        for file_name, entry in entries.items():
            if FILE_NAME_RE.fullmatch(file_name) is None or file_name in (
                MANIFEST_FILE,
                SIGNATURE_FILE,
            ):
                raise ValueError(f"bad file name {file_name!r}")
            digest = entry["sha256"]
            if not (isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest)):
                raise ValueError(f"bad sha256 for {file_name}")
            expected[file_name] = digest
        for required in REQUIRED_FILES:
            if required not in expected:
                raise ValueError(f"{required} not listed")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise fail(R_BAD_MANIFEST, f"{MANIFEST_FILE}: {exc}") from None
    # A validly signed manifest of another model or version must not be replayed here.
    if manifest.get("name") != name or manifest.get("version") != version:
        raise fail(
            R_IDENTITY,
            f"manifest is for {manifest.get('name')!r}/{manifest.get('version')!r}, "
            f"found in {name!r}/{version!r}",
        )
    if manifest.get("signing_key_id") != kid:
        raise fail(R_IDENTITY, "manifest signing_key_id differs from the signature's key_id")

    present = set(os.listdir(dir_fd))
    unexpected = sorted(present - set(expected) - {MANIFEST_FILE, SIGNATURE_FILE})
    if unexpected:
        raise fail(R_UNEXPECTED_FILE, f"files not in the manifest: {', '.join(unexpected)}")
    files: dict[str, bytes] = {}
    for file_name, digest in sorted(expected.items()):
        try:
            data = _read_limited(dir_fd, file_name)
        except OSError as exc:
            raise fail(R_MISSING_FILE, f"{file_name}: {exc}") from None
        actual = sha256_hex(data)
        if actual != digest:
            raise fail(
                R_HASH_MISMATCH,
                f"{file_name}: sha256 {actual} does not match the manifest's {digest}",
            )
        files[file_name] = data

    try:
        metadata = json.loads(files[METADATA_FILE])
        if not isinstance(metadata, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise fail(R_BAD_METADATA, f"{METADATA_FILE}: {exc}") from None
    return VerifiedArtifact(
        name=name,
        version=version,
        path=version_dir,
        key_id=kid,
        manifest=manifest,
        metadata=metadata,
        files=files,
        signed={MANIFEST_FILE: manifest_bytes, SIGNATURE_FILE: sig_bytes},
    )
