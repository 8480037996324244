"""Import signed versions from the IDE's drop box into the registry the API serves from.

The IDE runs a data scientist's code, so it may write its drop box and nothing the API
serves. The API reads ``<dropbox>/<name>/<version>/`` and copies a version into
``<model_dir>/<name>/`` only after its signature, identity and every hash checked out, and
it writes the bytes it verified, never a second read of a directory the IDE can still change.
A refused version stays where it is and is reported with its reason; an import activates
nothing (activation stays an admin call).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from . import metrics
from .artifact import (
    MANIFEST_FILE,
    VerifiedArtifact,
    is_valid_version,
    verify_artifact,
    version_sort_key,
)
from .errors import ModelIntegrityError
from .registry import ModelRegistry

log = logging.getLogger("ml_service.model")

R_BAD_VERSION_NAME = "bad_version_name"
R_VERSION_EXISTS = "version_exists"
R_WRITE_FAILED = "write_failed"
# One request verifies at most this many versions (newest first): bounded work per call.
MAX_VERSIONS_PER_IMPORT = 32

Status = Literal["imported", "present", "refused"]


class DropboxUnreadable(OSError):
    """The API may not list the drop box: its group or mode is not what the roles set."""


@dataclass(frozen=True)
class ImportResult:
    version: str
    status: Status
    reason: str | None = None
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def import_from_dropbox(dropbox_dir: Path, registry: ModelRegistry) -> list[ImportResult]:
    """Verify every version of the registry's model in the drop box, newest first, and copy
    in those that check out and are not in the registry yet."""
    source = dropbox_dir / registry.name
    try:
        entries = [e for e in os.listdir(source) if not e.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return []
    except PermissionError as exc:
        # The IDE owns the drop box; the API reads it through its group (roles/code_server).
        problem = f"the API may not read {source.name}/ in the drop box"
        raise DropboxUnreadable(exc.errno, problem) from None
    # Hidden entries are a training run's temp directories, still being written.
    valid = sorted(filter(is_valid_version, entries), key=version_sort_key, reverse=True)
    results = [
        _refused(e, R_BAD_VERSION_NAME, "not a version name (YYYYMMDDTHHMMSSZ[.N])")
        for e in sorted(set(entries) - set(valid))
    ]
    results += [_import_one(source / v, registry, v) for v in valid[:MAX_VERSIONS_PER_IMPORT]]
    for result in results:
        metrics.IMPORTS.labels(result=result.status).inc()
        if result.status == "refused":
            log.warning(
                "drop box: %s/%s refused (%s): %s",
                registry.name,
                result.version,
                result.reason,
                result.detail,
                extra={
                    "event": "model_import_refused",
                    "model_name": registry.name,
                    "model_version": result.version,
                    "integrity_reason": result.reason,
                },
            )
        elif result.status == "imported":
            log.info(
                "drop box: %s/%s imported",
                registry.name,
                result.version,
                extra={"event": "model_imported", "model_name": registry.name},
            )
    return results


def _refused(version: str, reason: str, detail: str) -> ImportResult:
    return ImportResult(version, "refused", reason, detail)


def _import_one(src: Path, registry: ModelRegistry, version: str) -> ImportResult:
    try:
        artifact = verify_artifact(src, registry.name, version, registry.trusted_keys())
    except ModelIntegrityError as exc:
        return _refused(version, exc.reason, exc.detail)
    target = registry.name_dir / version
    if target.exists():
        return _same_or_conflict(artifact, target)
    try:
        _write_copy(artifact, registry.name_dir, version)
    except FileExistsError:
        return _same_or_conflict(artifact, target)  # another worker imported it meanwhile
    except OSError as exc:
        return _refused(version, R_WRITE_FAILED, f"cannot write the registry: {exc.strerror}")
    return ImportResult(version, "imported")


def _same_or_conflict(artifact: VerifiedArtifact, target: Path) -> ImportResult:
    try:
        same = (target / MANIFEST_FILE).read_bytes() == artifact.signed[MANIFEST_FILE]
    except OSError:
        same = False
    if same:
        return ImportResult(artifact.version, "present")
    return _refused(
        artifact.version,
        R_VERSION_EXISTS,
        "the registry has another artifact under this version; versions are never replaced",
    )


def _write_copy(artifact: VerifiedArtifact, name_dir: Path, version: str) -> None:
    name_dir.mkdir(mode=0o755, exist_ok=True)
    tmp = name_dir / f".import-{version}-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o755)
    try:
        for file_name, data in {**artifact.files, **artifact.signed}.items():
            fd = os.open(tmp / file_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        try:
            # rename(2) of a directory onto a non-empty one fails: a version is never replaced.
            os.rename(tmp, name_dir / version)
        except OSError as exc:
            if (name_dir / version).exists():
                raise FileExistsError(exc.errno, exc.strerror) from None
            raise
        _fsync_dir(name_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
