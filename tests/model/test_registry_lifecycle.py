"""Activation, rollback, pointer following between workers, on-disk re-verification, rotation."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from signed_models import SigningKeys, make_keys, make_signed_model

from ml_service.model import ModelRegistry, NoModelError
from ml_service.model.artifact import canonical_json, write_artifact
from ml_service.model.signing import load_private_key

ROW = np.array([[6.0, 2.9, 4.5, 1.5]])


def failures(reason: str) -> float:
    value = REGISTRY.get_sample_value("ml_model_integrity_failures_total", {"reason": reason})
    return value or 0.0


def pointer(model_dir: Path) -> list[str]:
    return (model_dir / "iris" / "ACTIVE").read_text().split()


def test_activate_rollback_and_pointer(model_dir: Path, trusted_dir: Path, versions: list[str]):
    old, new = versions
    reg = ModelRegistry(model_dir, "iris", trusted_dir)
    assert reg.load().version == new
    first = reg.activate(old)
    assert reg.active is first and first.version == old
    assert pointer(model_dir) == [old, new]
    assert reg.activate(new).version == new
    assert pointer(model_dir) == [new, old]
    back = reg.rollback()
    assert back.version == old and reg.active is back
    assert pointer(model_dir) == [old]
    with pytest.raises(NoModelError):
        reg.rollback()
    assert reg.active is back
    statuses = {v.version: v.status for v in reg.versions()}
    assert statuses == {old: "active", new: "available"}
    assert [v.version for v in reg.versions()] == [new, old]  # newest first


def test_rollback_to_tampered_version_keeps_serving(
    model_dir: Path, trusted_dir: Path, versions: list[str]
):
    old, new = versions
    reg = ModelRegistry(model_dir, "iris", trusted_dir)
    reg.activate(old)
    current = reg.activate(new)
    (model_dir / "iris" / old / "metadata.json").write_text("{}")
    with pytest.raises(Exception) as info:
        reg.rollback()
    assert getattr(info.value, "reason", None) == "hash_mismatch"
    assert reg.active is current
    assert pointer(model_dir)[0] == new


def test_other_worker_follows_the_pointer(model_dir: Path, trusted_dir: Path, versions: list[str]):
    old, new = versions
    worker_a = ModelRegistry(model_dir, "iris", trusted_dir)
    worker_b = ModelRegistry(model_dir, "iris", trusted_dir)
    worker_a.load()
    worker_b.load()
    assert worker_b.active.version == new
    worker_a.activate(old)
    worker_b.refresh()
    assert worker_b.active.version == old
    same = worker_b.active
    worker_b.refresh()  # nothing changed: no reload
    assert worker_b.active is same
    worker_a.rollback()
    worker_b.refresh()
    assert worker_b.active.version == new


def test_pointer_to_tampered_version_is_not_followed(
    model_dir: Path, trusted_dir: Path, versions: list[str]
):
    old, new = versions
    calls: list[tuple[str, str]] = []
    worker = ModelRegistry(
        model_dir, "iris", trusted_dir, on_integrity_failure=lambda v, r: calls.append((v, r))
    )
    worker.activate(new)
    serving = worker.active
    (model_dir / "iris" / old / "model.joblib").write_bytes(b"evil")
    # Someone edits the pointer by hand (or a compromised worker writes it).
    (model_dir / "iris" / "ACTIVE").write_text(old + "\n")
    for _ in range(3):
        worker.refresh()
    assert worker.active is serving
    assert calls == [(old, "hash_mismatch")]  # reported once, not on every tick


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda d: d.joinpath("model.joblib").write_bytes(b"x"), "hash_mismatch"),
        (lambda d: d.joinpath("manifest.sig").unlink(), "missing_signature"),
        (lambda d: d.joinpath("notes.txt").write_text("x"), "unexpected_file"),
        (lambda d: shutil.rmtree(d), "missing_directory"),
    ],
)
def test_periodic_reverification_reports_tampering_and_keeps_serving(
    tamper, reason: str, model_dir: Path, trusted_dir: Path, versions: list[str]
):
    calls: list[tuple[str, str]] = []
    reg = ModelRegistry(
        model_dir,
        "iris",
        trusted_dir,
        on_integrity_failure=lambda v, r: calls.append((v, r)),
        reverify_interval=0.0,
    )
    model = reg.load()
    expected = model.predict_proba(ROW)
    before = failures(reason)
    tamper(model_dir / "iris" / model.version)
    reg.refresh()
    reg.refresh()
    assert reg.active is model
    np.testing.assert_array_equal(reg.active.predict_proba(ROW), expected)
    assert calls == [(model.version, reason)]
    assert failures(reason) == before + 1
    active_info = next(v for v in reg.versions() if v.status == "active")
    assert active_info.reason == reason


def test_reverification_is_rate_limited(model_dir: Path, trusted_dir: Path, versions: list[str]):
    reg = ModelRegistry(model_dir, "iris", trusted_dir, reverify_interval=3600)
    model = reg.load()
    (model_dir / "iris" / model.version / "model.joblib").write_bytes(b"x")
    reg.refresh()  # interval not reached: no disk read, nothing reported
    assert reg.versions()[0].reason is None
    assert reg.reverify_now() == "hash_mismatch"


def test_reverify_detects_resigned_content(
    model_dir: Path, trusted_dir: Path, versions: list[str], session_keys: SigningKeys
):
    """A trusted key re-signing different content under the served version is still reported."""
    new = versions[1]
    reg = ModelRegistry(model_dir, "iris", trusted_dir)
    model = reg.activate(new)
    shutil.rmtree(model_dir / "iris" / new)
    staging = model_dir.parent / "staging"
    make_signed_model(staging, session_keys, random_state=7)
    (src,) = [p for p in (staging / "iris").iterdir() if p.is_dir()]

    md = json.loads((src / "metadata.json").read_text())
    md["version"] = new
    write_artifact(
        model_dir,
        "iris",
        {"model.joblib": (src / "model.joblib").read_bytes(), "metadata.json": canonical_json(md)},
        load_private_key(session_keys.private_key),
        version=new,
    )
    assert reg.reverify_now() == "changed_on_disk"
    assert reg.active is model


def test_key_rotation(model_dir: Path, trusted_dir: Path, versions: list[str], tmp_path: Path):
    old, new = versions
    new_keys = make_keys(tmp_path / "rotated")
    shutil.copy(new_keys.public_key, trusted_dir / "next.pub")
    reg = ModelRegistry(model_dir, "iris", trusted_dir, reverify_interval=0.0)
    reg.activate(new)
    rotated_dir = make_signed_model(model_dir, new_keys, random_state=3)
    # Both keys trusted: old-key and new-key versions load.
    assert reg.activate(rotated_dir.name).key_id == new_keys.key_id
    assert reg.activate(old).version == old
    # Retire the old key: its versions become refused; the served one is reported.
    (trusted_dir / "current.pub").unlink()
    reg.refresh()
    statuses = {v.version: (v.status, v.reason) for v in reg.versions()}
    assert statuses[new] == ("refused", "untrusted_key")
    assert statuses[old] == ("active", "untrusted_key")
    assert reg.activate(rotated_dir.name).version == rotated_dir.name
    assert {v.version: v.status for v in reg.versions()}[rotated_dir.name] == "active"


# Activation under load across worker processes: test_registry_processes.py.


def test_in_place_pointer_edit_of_same_length_is_followed(
    model_dir: Path, trusted_dir: Path, versions: list[str]
):
    old, new = versions
    width = max(len(old), len(new))  # versions may be "X" and "X.1": pad to one size
    pointer_file = model_dir / "iris" / "ACTIVE"
    pointer_file.write_text(new.ljust(width) + "\n")
    worker = ModelRegistry(model_dir, "iris", trusted_dir)
    assert worker.load().version == new
    # Same inode, same size, maybe within the same mtime tick.
    pointer_file.write_text(old.ljust(width) + "\n")
    worker.refresh()
    assert worker.active.version == old
