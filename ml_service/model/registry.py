"""ModelRegistry: verified loading, activation, rollback and on-disk re-verification.

``<model_dir>/<name>/ACTIVE`` is the pointer shared by every worker process: its
first line is the active version, the following lines the previously active ones
(most recent first) for ``rollback()``. It is replaced atomically (write a temp
file, fsync, rename), so a reader sees either the old or the new pointer. Its
read-modify-write (activate, rollback) holds an exclusive ``flock`` on
``<model_dir>/<name>/.ACTIVE.lock``: workers are processes, and two of them changing the
pointer at once would otherwise each start from the same old pointer and lose an update.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import metrics
from .artifact import (
    R_LOAD_FAILED,
    VerifiedArtifact,
    is_valid_version,
    verify_artifact,
    version_sort_key,
)
from .errors import ModelIntegrityError, NoModelError
from .loaded import LoadedModel, build_loaded_model
from .signing import TrustedKeys, load_trusted_keys

log = logging.getLogger("ml_service.model")

POINTER_FILE = "ACTIVE"
POINTER_LOCK = ".ACTIVE.lock"
POINTER_HISTORY = 20
R_CHANGED_ON_DISK = "changed_on_disk"

IntegrityCallback = Callable[[str, str], None]


@dataclass(frozen=True)
class ModelVersionInfo:
    version: str
    status: str  # "active" | "available" | "refused"
    reason: str | None = None
    trained_at: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    sha256: str | None = None
    signing_key_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class ModelRegistry:
    def __init__(
        self,
        model_dir: Path,
        name: str,
        trusted_keys_dir: Path,
        on_integrity_failure: IntegrityCallback | None = None,
        *,
        reverify_interval: float = 60.0,
        allow_fast: bool | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.name = name
        self.trusted_keys_dir = Path(trusted_keys_dir)
        self.on_integrity_failure = on_integrity_failure
        self.reverify_interval = reverify_interval
        if allow_fast is None:
            # Kill switch for operators (and the before/after benchmark): ML_MODEL_FAST_PATH=0.
            allow_fast = os.environ.get("ML_MODEL_FAST_PATH", "1").strip().lower() not in (
                "0",
                "false",
                "no",
                "off",
            )
        self.allow_fast = allow_fast
        self._lock = threading.RLock()
        self._active: LoadedModel | None = None
        self._trusted: TrustedKeys | None = None
        self._pointer_stamp: bytes | None = None
        self._last_reverify = time.monotonic()
        # What has been reported and not resolved since, to report each problem once
        # per process rather than on every refresh tick: version -> reason.
        self._open_problems: dict[str, str] = {}

    # ------------------------------------------------------------------ paths
    @property
    def name_dir(self) -> Path:
        return self.model_dir / self.name

    @property
    def pointer_path(self) -> Path:
        return self.name_dir / POINTER_FILE

    @property
    def active(self) -> LoadedModel | None:
        return self._active

    # ------------------------------------------------------------- public API
    def load(self) -> LoadedModel:
        """Load the pointer's version, else its history, else the newest valid version."""
        with self._lock:
            self._pointer_stamp = self._stat_pointer()
            pointed = self._read_pointer()
            candidates = [*pointed]
            for version in self._list_versions():
                if version not in candidates:
                    candidates.append(version)
            for version in candidates:
                try:
                    model = self._verify_and_build(version, report="once")
                except (ModelIntegrityError, KeyError):
                    continue
                if pointed and version != pointed[0]:
                    log.warning(
                        "active pointer names %s, which is not loadable; serving %s instead",
                        pointed[0],
                        version,
                        extra={"model_name": self.name, "model_version": version},
                    )
                self._set_active(model)
                return model
            raise NoModelError(f"no valid version of model {self.name!r} in {self.name_dir}")

    def activate(self, version: str) -> LoadedModel:
        with self._lock:
            model = self._verify_and_build(version, report="always")
            with self._pointer_locked():
                pointed = self._read_pointer()
                # The shared pointer, not this process's model: another worker may have
                # changed it since this one last followed.
                current = (
                    pointed[0] if pointed else (self._active.version if self._active else None)
                )
                history = [v for v in pointed if v != version]
                if current and current != version:
                    history = [current, *[v for v in history if v != current]]
                self._write_pointer([version, *history])
                self._set_active(model)
            log.info(
                "activated model %s/%s (previous %s)",
                self.name,
                version,
                current,
                extra={"model_name": self.name, "model_version": version},
            )
            return model

    def rollback(self) -> LoadedModel:
        with self._lock, self._pointer_locked():
            pointer = self._read_pointer()
            current = pointer[0] if pointer else (self._active.version if self._active else None)
            history = [v for v in pointer[1:] if v != current] if pointer else []
            if not history:
                raise NoModelError(f"model {self.name!r} has no previous version to roll back to")
            target = history[0]
            model = self._verify_and_build(target, report="always")
            self._write_pointer([target, *history[1:]])
            self._set_active(model)
            log.warning(
                "rolled model %s back from %s to %s",
                self.name,
                current,
                target,
                extra={"model_name": self.name, "model_version": target},
            )
            return model

    def refresh(self) -> None:
        """Follow a pointer changed by another worker; re-verify the active files now and then."""
        if not self._lock.acquire(blocking=False):
            return  # an activation is running; the next tick will look again
        try:
            stamp = self._stat_pointer()
            if stamp != self._pointer_stamp:
                self._pointer_stamp = stamp
                self._follow_pointer()
            now = time.monotonic()
            if now - self._last_reverify >= self.reverify_interval:
                self._last_reverify = now
                self._reverify_active()
        finally:
            self._lock.release()

    def reverify_now(self) -> str | None:
        """Re-verify the active model's files immediately; return the problem or None."""
        with self._lock:
            self._last_reverify = time.monotonic()
            return self._reverify_active()

    def build_version(self, version: str) -> LoadedModel:
        """Verify and build ``version`` without activating it (requests naming a version).

        Raises ``KeyError`` for an unknown version and ``ModelIntegrityError`` for one that
        fails verification (reported once, like a refused version at load time).
        """
        active = self._active
        if active is not None and active.version == version:
            return active
        return self._verify_and_build(version, report="once")

    def versions(self) -> list[ModelVersionInfo]:
        """Every version directory, newest first, with its verification status (no unpickling)."""
        active = self._active
        infos: list[ModelVersionInfo] = []
        trusted = self._trusted_keys()
        listed = self._list_versions()
        if active is not None and active.version not in listed:
            # Served from memory although its directory vanished: still show it.
            listed = sorted([*listed, active.version], key=version_sort_key, reverse=True)
        for version in listed:
            if active is not None and version == active.version:
                md = active.metadata
                infos.append(
                    ModelVersionInfo(
                        version=version,
                        status="active",
                        reason=self._open_problems.get(version),
                        trained_at=md.get("trained_at"),
                        metrics=md.get("metrics", {}),
                        sha256=active.sha256,
                        signing_key_id=active.key_id,
                    )
                )
                continue
            try:
                art = verify_artifact(self.name_dir / version, self.name, version, trusted)
            except ModelIntegrityError as exc:
                infos.append(ModelVersionInfo(version=version, status="refused", reason=exc.reason))
                continue
            infos.append(
                ModelVersionInfo(
                    version=version,
                    status="available",
                    trained_at=art.metadata.get("trained_at"),
                    metrics=art.metadata.get("metrics", {}),
                    sha256=art.model_sha256,
                    signing_key_id=art.key_id,
                )
            )
        return infos

    # --------------------------------------------------------------- internals
    def _set_active(self, model: LoadedModel) -> None:
        # One reference assignment: requests holding the old object finish with it.
        self._active = model
        self._last_reverify = time.monotonic()
        self._open_problems.pop(model.version, None)

    def _trusted_keys(self) -> TrustedKeys:
        self._trusted = load_trusted_keys(self.trusted_keys_dir, self._trusted)
        return self._trusted

    def trusted_keys(self) -> TrustedKeys:
        """The trusted public keys as they are on disk now (re-read when they changed)."""
        return self._trusted_keys()

    def _list_versions(self) -> list[str]:
        try:
            names = [p.name for p in self.name_dir.iterdir() if p.is_dir()]
        except FileNotFoundError:
            return []
        return sorted((n for n in names if is_valid_version(n)), key=version_sort_key, reverse=True)

    def _verify(self, version: str) -> VerifiedArtifact:
        if not is_valid_version(version) or not (self.name_dir / version).is_dir():
            raise KeyError(version)
        return verify_artifact(self.name_dir / version, self.name, version, self._trusted_keys())

    def _verify_and_build(self, version: str, report: str) -> LoadedModel:
        """Verify, then unpickle. ``report``: "always" (explicit action) or "once"."""
        try:
            artifact = self._verify(version)
            try:
                model = build_loaded_model(artifact, allow_fast=self.allow_fast)
            except ModelIntegrityError:
                raise
            except Exception as exc:  # a refusal of this version, never a crash of the caller
                raise ModelIntegrityError(
                    version, R_LOAD_FAILED, f"building failed: {exc.__class__.__name__}"
                ) from None
        except ModelIntegrityError as exc:
            if report == "always" or self._open_problems.get(version) != exc.reason:
                self._report(version, exc.reason, exc.detail)
            raise
        return model

    def _follow_pointer(self) -> None:
        pointed = self._read_pointer()
        if not pointed:
            return
        target = pointed[0]
        if self._active is not None and self._active.version == target:
            return
        try:
            model = self._verify_and_build(target, report="once")
        except KeyError:
            log.error(
                "active pointer names unknown version %s; keeping %s",
                target,
                self._active.version if self._active else None,
                extra={"model_name": self.name, "model_version": target},
            )
            return
        except ModelIntegrityError:
            return  # reported; the verified in-memory model keeps serving
        self._set_active(model)
        log.info(
            "followed active pointer to %s/%s",
            self.name,
            target,
            extra={"model_name": self.name, "model_version": target},
        )

    def _reverify_active(self) -> str | None:
        model = self._active
        if model is None:
            return None
        version = model.version
        try:
            artifact = verify_artifact(
                self.name_dir / version, self.name, version, self._trusted_keys()
            )
            if artifact.file_hashes() != model.file_hashes:
                raise ModelIntegrityError(
                    version,
                    R_CHANGED_ON_DISK,
                    "files on disk were re-signed with different content than the served model",
                )
        except ModelIntegrityError as exc:
            if self._open_problems.get(version) != exc.reason:
                self._report(version, exc.reason, exc.detail, serving=True)
            return exc.reason
        if version in self._open_problems:
            log.warning(
                "model %s/%s files on disk verify again",
                self.name,
                version,
                extra={"model_name": self.name, "model_version": version},
            )
            self._open_problems.pop(version, None)
        return None

    def _report(self, version: str, reason: str, detail: str, serving: bool = False) -> None:
        self._open_problems[version] = reason
        metrics.INTEGRITY_FAILURES.labels(reason=reason).inc()
        active = self._active.version if self._active else None
        if serving:
            message = "model %s/%s: files on disk failed verification (%s): %s; " + (
                "still serving the copy verified at load time (active %s)"
            )
        else:
            message = "model %s/%s refused (%s): %s; serving %s"
        log.error(
            message,
            self.name,
            version,
            reason,
            detail,
            active,
            extra={
                "event": "model_integrity_failure",
                "model_name": self.name,
                "model_version": version,
                "integrity_reason": reason,
            },
        )
        if self.on_integrity_failure is not None:
            try:
                self.on_integrity_failure(version, reason)
            except Exception:
                log.exception("on_integrity_failure callback failed")

    # ----------------------------------------------------------------- pointer
    def _stat_pointer(self) -> bytes | None:
        # The content itself (a few hundred bytes), not stat(): an in-place edit of the
        # same length within one timestamp tick would leave inode, mtime and size unchanged.
        try:
            with open(self.pointer_path, "rb") as fh:
                return fh.read(64 * 1024)
        except FileNotFoundError:
            return None

    def _read_pointer(self) -> list[str]:
        try:
            text = self.pointer_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        versions: list[str] = []
        for line in text.splitlines():
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if not is_valid_version(line):
                log.error("ignoring invalid version %r in %s", line, self.pointer_path)
                continue
            if line not in versions:
                versions.append(line)
        return versions

    @contextlib.contextmanager
    def _pointer_locked(self) -> Iterator[None]:
        """Exclusive across processes (and, with ``self._lock``, threads) for a pointer
        read-modify-write. Released when the descriptor closes, also if the process dies."""
        self.name_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.name_dir / POINTER_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write_pointer(self, versions: list[str]) -> None:
        self.name_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.name_dir / f".{POINTER_FILE}.{os.getpid()}.{threading.get_ident()}.tmp"
        data = "\n".join(versions[: POINTER_HISTORY + 1]) + "\n"
        try:
            with open(tmp, "w", encoding="utf-8") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.pointer_path)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        dir_fd = os.open(self.name_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
        self._pointer_stamp = self._stat_pointer()
