"""Artifact writing and versions: ordering, collisions, no overwrite, no leftovers."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from signed_models import SigningKeys

from ml_service.model.artifact import (
    is_valid_version,
    new_version,
    version_sort_key,
    write_artifact,
)
from ml_service.model.signing import load_private_key

FILES = {"model.joblib": b"not really a model", "metadata.json": b"{}"}


def test_version_format_and_order() -> None:
    versions = ["20261127T153000Z.2", "20261127T153001Z", "20261127T153000Z", "20261127T153000Z.1"]
    assert sorted(versions, key=version_sort_key) == [
        "20261127T153000Z",
        "20261127T153000Z.1",
        "20261127T153000Z.2",
        "20261127T153001Z",
    ]
    for bad in ("1.0.3", "20261127T153000", "20261127T153000Z.0", "../20261127T153000Z", ""):
        assert not is_valid_version(bad)
        with pytest.raises(ValueError):
            version_sort_key(bad)


def test_same_second_versions_get_a_suffix(tmp_path: Path) -> None:
    now = datetime(2026, 11, 27, 15, 30, tzinfo=UTC)
    assert new_version(tmp_path, now) == "20261127T153000Z"
    (tmp_path / "20261127T153000Z").mkdir()
    (tmp_path / "20261127T153000Z.1").mkdir()
    assert new_version(tmp_path, now) == "20261127T153000Z.2"


def test_write_is_atomic_and_never_overwrites(tmp_path: Path, session_keys: SigningKeys) -> None:
    key = load_private_key(session_keys.private_key)
    path = write_artifact(tmp_path, "iris", FILES, key, version="20261127T153000Z")
    assert sorted(p.name for p in path.iterdir()) == [
        "manifest.json",
        "manifest.sig",
        "metadata.json",
        "model.joblib",
    ]
    with pytest.raises(OSError):
        write_artifact(tmp_path, "iris", FILES, key, version="20261127T153000Z")
    assert sorted(p.name for p in (tmp_path / "iris").iterdir()) == ["20261127T153000Z"]


@pytest.mark.parametrize(
    "files",
    [
        {"model.joblib": b"x"},
        {**FILES, "../escape": b"x"},
        {**FILES, "manifest.json": b"{}"},
    ],
)
def test_write_rejects_bad_file_sets(tmp_path: Path, session_keys: SigningKeys, files) -> None:
    with pytest.raises(ValueError):
        write_artifact(tmp_path, "iris", files, load_private_key(session_keys.private_key))


def test_write_rejects_bad_names(tmp_path: Path, session_keys: SigningKeys) -> None:
    key = load_private_key(session_keys.private_key)
    with pytest.raises(ValueError):
        write_artifact(tmp_path, "../iris", FILES, key)
    with pytest.raises(ValueError):
        write_artifact(tmp_path, "iris", FILES, key, version="latest")
