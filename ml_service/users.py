"""The users file: argon2id password hashes and roles, reloaded when it changes.

Format (JSON, written atomically by ``python -m ml_service users ...``)::

    {"format": 1, "users": {"alice": {"role": "admin", "password_hash": "$argon2id$...",
                                      "created_at": "...", "tokens_valid_after": 1732700000,
                                      "token_generation": "k3J9..."}}}

``token_generation`` is a random value replaced on ``add``, ``passwd`` and
``role``; every token carries the generation it was issued under, so tokens
issued before a change stop working at once (a counter would repeat when a
user is removed and added again; a timestamp of whole seconds would let a
token of the same second through). ``tokens_valid_after`` is kept for tokens
issued before generations existed.

The file is validated as a whole: one bad entry and the service keeps the last
good list (and logs the problem once) instead of failing requests.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .settings import ROLES, Settings

log = logging.getLogger("ml_service.users")

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024
_ENTRY_KEYS = frozenset(
    {"role", "password_hash", "created_at", "tokens_valid_after", "token_generation"}
)
_GENERATION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


class UserFileError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: str
    password_hash: str
    tokens_valid_after: int
    token_generation: str


def new_generation() -> str:
    return secrets.token_urlsafe(12)


def audit_name(name: str, key: bytes) -> str:
    """A login name as the audit log may show it: as typed if it is a valid user name, else
    a keyed hash (the text may be a password typed into the name field)."""
    if USERNAME_RE.fullmatch(name):
        return name
    digest = hmac.new(key, name.encode("utf-8", "backslashreplace"), hashlib.sha256)
    return "invalid:" + digest.hexdigest()[:16]


def make_hasher(settings: Settings | None = None) -> PasswordHasher:
    """argon2id with the service's parameters (the CLI reads the same ML_SERVICE_ARGON2_*)."""
    if settings is None:
        env = os.environ
        return PasswordHasher(
            time_cost=int(env.get("ML_SERVICE_ARGON2_TIME_COST", "3")),
            memory_cost=int(env.get("ML_SERVICE_ARGON2_MEMORY_KIB", "65536")),
            parallelism=int(env.get("ML_SERVICE_ARGON2_PARALLELISM", "4")),
            type=Type.ID,
        )
    return PasswordHasher(
        time_cost=settings.argon2_time_cost,
        memory_cost=settings.argon2_memory_kib,
        parallelism=settings.argon2_parallelism,
        type=Type.ID,
    )


def check_username(name: str) -> None:
    if not USERNAME_RE.fullmatch(name):
        raise UserFileError(
            "user names are 1-64 characters: lower-case letters, digits, '.', '_', '-' "
            "(starting with a letter or digit)"
        )


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_CHARS:
        raise UserFileError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise UserFileError(f"the password must have at most {MAX_PASSWORD_CHARS} characters")
    if len(set(password)) < 5:
        raise UserFileError("the password is too repetitive")


def _parse(raw: bytes, path: Path) -> dict[str, User]:
    try:
        data = json.loads(raw) if raw.strip() else {"format": 1, "users": {}}
    except (ValueError, RecursionError) as exc:
        raise UserFileError(f"{path}: not valid JSON: {exc}") from exc
    if (
        not isinstance(data, dict)
        or data.get("format") != 1
        or not isinstance(data.get("users"), dict)
    ):
        raise UserFileError(f"{path}: expected {{'format': 1, 'users': {{...}}}}")
    return {name: _entry(name, entry, path) for name, entry in data["users"].items()}


def _entry(name: str, entry: object, path: Path) -> User:
    def bad(what: str) -> UserFileError:
        return UserFileError(f"{path}: user {name[:64]!r}: {what}")

    if not USERNAME_RE.fullmatch(name):
        raise bad("not a valid user name")
    if not isinstance(entry, dict):
        raise bad("entry is not an object")
    unknown = sorted(set(entry) - _ENTRY_KEYS)
    if unknown:
        raise bad(f"unknown fields {unknown}")
    if entry.get("role") not in ROLES:
        raise bad("no valid role")
    password_hash = entry.get("password_hash")
    if not isinstance(password_hash, str) or not password_hash.startswith("$argon2id$"):
        raise bad("no argon2id hash")
    valid_after = entry.get("tokens_valid_after", 0)
    if not isinstance(valid_after, int) or isinstance(valid_after, bool) or valid_after < 0:
        raise bad("tokens_valid_after must be a non-negative integer")
    if not isinstance(entry.get("created_at", ""), str):
        raise bad("created_at must be a string")
    generation = entry.get("token_generation", f"t{valid_after}")
    if not isinstance(generation, str) or not _GENERATION_RE.fullmatch(generation):
        raise bad("token_generation must be 1-64 URL-safe characters")
    return User(
        name=name,
        role=entry["role"],
        password_hash=password_hash,
        tokens_valid_after=valid_after,
        token_generation=generation,
    )


def check_users_file(path: Path) -> None:
    """Raise UserFileError unless ``path`` is a readable, valid users file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserFileError(f"{path}: {exc.strerror}") from None
    _parse(raw, path)


class UserStore:
    """Read side used by the service: cheap lookups, reload when the file changes.

    The file is looked at (one ``stat``) on every lookup, so a change made with the CLI
    applies to the very next login and request.
    """

    def __init__(self, path: Path, hasher: PasswordHasher) -> None:
        self._path = path
        self._hasher = hasher
        self._signature: tuple[int, int, int, int] | None = None
        self._bad_signature: tuple[int, int, int, int] | None = None
        self._users: dict[str, User] = {}
        # Verifying against this when the user is unknown makes both paths cost the same.
        self._dummy_hash = hasher.hash(os.urandom(16).hex())
        self.reload(force=True)

    def reload(self, force: bool = False) -> None:
        st = os.stat(self._path)
        signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if not force and signature in (self._signature, self._bad_signature):
            return
        try:
            self._users = _parse(self._path.read_bytes(), self._path)
        except UserFileError:
            self._bad_signature = signature
            raise
        self._signature = signature
        if self._bad_signature is not None:
            log.warning("users file %s is valid again (%d users)", self._path, len(self._users))
            self._bad_signature = None

    def get(self, name: str) -> User | None:
        try:
            self.reload()
        except (OSError, UserFileError) as exc:
            # A broken or missing file keeps the last good user list (no lock-out); the
            # problem is logged once per state of the file, not once per request.
            if isinstance(exc, OSError):
                signature = (-1, -1, -1, exc.errno or 0)
                if signature != self._bad_signature:
                    self._bad_signature = signature
                    log.error("users file %s unreadable: %s", self._path, exc.strerror)
            else:
                log.error("users file refused, keeping the last good list: %s", exc)
        return self._users.get(name)

    def names_and_roles(self) -> list[tuple[str, str]]:
        self.get("")
        return sorted((u.name, u.role) for u in self._users.values())

    def authenticate(self, name: str, password: str) -> User | None:
        """Blocking (argon2): call from a worker thread."""
        user = self.get(name)
        try:
            self._hasher.verify(user.password_hash if user else self._dummy_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return None
        return user


# ----- write side (CLI) -----


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read_raw(path: Path) -> dict:
    if not path.exists():
        return {"format": 1, "users": {}}
    raw = path.read_bytes()
    _parse(raw, path)
    return json.loads(raw) if raw.strip() else {"format": 1, "users": {}}


def _write_atomic(path: Path, data: dict) -> None:
    mode, uid, gid = 0o600, None, None
    if path.exists():
        st = path.stat()
        mode, uid, gid = st.st_mode & 0o777, st.st_uid, st.st_gid
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        if uid is not None and gid is not None and os.geteuid() == 0:
            os.chown(tmp, uid, gid)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def add_user(path: Path, name: str, role: str, password: str, hasher: PasswordHasher) -> None:
    check_username(name)
    if role not in ROLES:
        raise UserFileError(f"role must be one of {', '.join(ROLES)}")
    check_password(password)
    with _locked(path):
        data = _read_raw(path)
        if name in data["users"]:
            raise UserFileError(f"user {name!r} exists (use passwd to change the password)")
        data["users"][name] = {
            "role": role,
            "password_hash": hasher.hash(password),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "tokens_valid_after": int(time.time()),
            "token_generation": new_generation(),
        }
        _write_atomic(path, data)


def remove_user(path: Path, name: str) -> None:
    with _locked(path):
        data = _read_raw(path)
        if data["users"].pop(name, None) is None:
            raise UserFileError(f"no user {name!r}")
        _write_atomic(path, data)


def set_password(path: Path, name: str, password: str, hasher: PasswordHasher) -> None:
    check_password(password)
    with _locked(path):
        data = _read_raw(path)
        if name not in data["users"]:
            raise UserFileError(f"no user {name!r}")
        data["users"][name]["password_hash"] = hasher.hash(password)
        data["users"][name]["tokens_valid_after"] = int(time.time())
        data["users"][name]["token_generation"] = new_generation()
        _write_atomic(path, data)


def set_role(path: Path, name: str, role: str) -> None:
    if role not in ROLES:
        raise UserFileError(f"role must be one of {', '.join(ROLES)}")
    with _locked(path):
        data = _read_raw(path)
        if name not in data["users"]:
            raise UserFileError(f"no user {name!r}")
        data["users"][name]["role"] = role
        data["users"][name]["tokens_valid_after"] = int(time.time())
        data["users"][name]["token_generation"] = new_generation()
        _write_atomic(path, data)


def list_users(path: Path) -> list[tuple[str, str, str]]:
    data = _read_raw(path)
    return sorted(
        (name, entry["role"], entry.get("created_at", "")) for name, entry in data["users"].items()
    )
