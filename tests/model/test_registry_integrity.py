"""Every kind of tampering is refused before unpickling; the previous model keeps serving."""

from __future__ import annotations

import base64
import json
import logging
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import REGISTRY
from signed_models import SigningKeys

from ml_service.model import LoadedModel, ModelIntegrityError, ModelRegistry, NoModelError
from ml_service.model.artifact import canonical_json, sha256_hex, write_artifact
from ml_service.model.signing import load_private_key

ROW = np.array([[5.1, 3.5, 1.4, 0.2]])


def failures(reason: str) -> float:
    value = REGISTRY.get_sample_value("ml_model_integrity_failures_total", {"reason": reason})
    return value or 0.0


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __call__(self, version: str, reason: str) -> None:
        self.calls.append((version, reason))


def serving(model_dir: Path, trusted_dir: Path, versions: list[str]):
    """A registry serving the OLD version, with the NEW one as the activation target."""
    recorder = Recorder()
    reg = ModelRegistry(model_dir, "iris", trusted_dir, on_integrity_failure=recorder)
    reg.activate(versions[0])
    return reg, recorder


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_metadata(d: Path) -> None:
    md = json.loads((d / "metadata.json").read_text())
    md["metrics"]["holdout_accuracy"] = 1.0
    (d / "metadata.json").write_text(json.dumps(md))


def _swap_signature(d: Path, other: Path) -> None:
    shutil.copy(other / "manifest.sig", d / "manifest.sig")


def _rehash_manifest_without_signing(d: Path) -> None:
    flip_byte(d / "model.joblib")
    manifest = json.loads((d / "manifest.json").read_text())
    manifest["files"]["model.joblib"]["sha256"] = sha256_hex((d / "model.joblib").read_bytes())
    (d / "manifest.json").write_bytes(canonical_json(manifest))


def _garbage_signature(d: Path) -> None:
    sig = json.loads((d / "manifest.sig").read_text())
    sig["signature"] = base64.b64encode(b"\0" * 64).decode()
    (d / "manifest.sig").write_text(json.dumps(sig))


TAMPERS = {
    "changed byte in model": (lambda d, o: flip_byte(d / "model.joblib"), "hash_mismatch"),
    "edited metadata": (lambda d, o: _edit_metadata(d), "hash_mismatch"),
    "swapped signature": (_swap_signature, "bad_signature"),
    "garbage signature": (lambda d, o: _garbage_signature(d), "bad_signature"),
    "manifest re-hashed, not re-signed": (
        lambda d, o: _rehash_manifest_without_signing(d),
        "bad_signature",
    ),
    "missing manifest": (lambda d, o: (d / "manifest.json").unlink(), "missing_manifest"),
    "missing signature": (lambda d, o: (d / "manifest.sig").unlink(), "missing_signature"),
    "missing model file": (lambda d, o: (d / "model.joblib").unlink(), "missing_file"),
    "file not in manifest": (
        lambda d, o: (d / "extra.py").write_text("print('hi')"),
        "unexpected_file",
    ),
    "malformed signature file": (
        lambda d, o: (d / "manifest.sig").write_text("not json"),
        "malformed_signature",
    ),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERS))
def test_tampered_version_is_refused_and_old_keeps_serving(
    tamper: str,
    model_dir: Path,
    trusted_dir: Path,
    versions: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    reg, recorder = serving(model_dir, trusted_dir, versions)
    old = reg.active
    assert old is not None
    expected = old.predict_proba(ROW)
    apply, reason = TAMPERS[tamper]
    apply(model_dir / "iris" / versions[1], model_dir / "iris" / versions[0])
    before = failures(reason)

    with (
        caplog.at_level(logging.ERROR, logger="ml_service.model"),
        pytest.raises(ModelIntegrityError) as info,
    ):
        reg.activate(versions[1])

    assert info.value.reason == reason
    assert reg.active is old
    np.testing.assert_array_equal(reg.active.predict_proba(ROW), expected)
    assert recorder.calls == [(versions[1], reason)]
    assert failures(reason) == before + 1
    assert any(
        r.levelno == logging.ERROR and getattr(r, "integrity_reason", None) == reason
        for r in caplog.records
    )
    # The pointer still names the serving version, so other workers stay on it too.
    assert (model_dir / "iris" / "ACTIVE").read_text().splitlines()[0] == versions[0]
    statuses = {v.version: (v.status, v.reason) for v in reg.versions()}
    assert statuses[versions[1]] == ("refused", reason)
    assert statuses[versions[0]] == ("active", None)


def test_untrusted_key_is_refused(
    model_dir: Path, trusted_dir: Path, versions: list[str], other_keys: SigningKeys
) -> None:
    reg, recorder = serving(model_dir, trusted_dir, versions)
    old = reg.active
    # A perfectly valid artifact, signed by a key the service does not trust.
    src = model_dir / "iris" / versions[1]
    files = {n: (src / n).read_bytes() for n in ("model.joblib", "metadata.json")}
    md = json.loads(files["metadata.json"])
    md["version"] = "20300101T000000Z"
    files["metadata.json"] = canonical_json(md)
    write_artifact(
        model_dir,
        "iris",
        files,
        load_private_key(other_keys.private_key),
        version="20300101T000000Z",
    )
    with pytest.raises(ModelIntegrityError) as info:
        reg.activate("20300101T000000Z")
    assert info.value.reason == "untrusted_key"
    assert reg.active is old
    assert recorder.calls == [("20300101T000000Z", "untrusted_key")]


def test_signed_manifest_replayed_under_another_version_is_refused(
    model_dir: Path, trusted_dir: Path, versions: list[str]
) -> None:
    reg, _ = serving(model_dir, trusted_dir, versions)
    # A genuine, signed artifact copied to a newer-looking version name.
    shutil.copytree(model_dir / "iris" / versions[1], model_dir / "iris" / "20991231T235959Z")
    with pytest.raises(ModelIntegrityError) as info:
        reg.activate("20991231T235959Z")
    assert info.value.reason == "manifest_identity_mismatch"


def test_nothing_is_unpickled_before_verification(
    model_dir: Path, trusted_dir: Path, versions: list[str], tmp_path: Path
) -> None:
    reg, _ = serving(model_dir, trusted_dir, versions)
    canary = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (Path.touch, (canary,))

    (model_dir / "iris" / versions[1] / "model.joblib").write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ModelIntegrityError):
        reg.activate(versions[1])
    assert not canary.exists()
    # And listing versions never unpickles either.
    reg.versions()
    assert not canary.exists()


def test_load_skips_a_tampered_pointer_target(
    model_dir: Path, trusted_dir: Path, versions: list[str]
) -> None:
    (model_dir / "iris" / "ACTIVE").write_text(versions[1] + "\n" + versions[0] + "\n")
    flip_byte(model_dir / "iris" / versions[1] / "model.joblib")
    recorder = Recorder()
    reg = ModelRegistry(model_dir, "iris", trusted_dir, on_integrity_failure=recorder)
    model = reg.load()
    assert model.version == versions[0]
    assert recorder.calls == [(versions[1], "hash_mismatch")]


def test_no_valid_model_raises(model_dir: Path, trusted_dir: Path, versions: list[str]) -> None:
    for v in versions:
        (model_dir / "iris" / v / "manifest.sig").unlink()
    reg = ModelRegistry(model_dir, "iris", trusted_dir)
    with pytest.raises(NoModelError):
        reg.load()
    assert reg.active is None
    empty = ModelRegistry(model_dir / "nowhere", "iris", trusted_dir)
    with pytest.raises(NoModelError):
        empty.load()


def test_no_trusted_keys_refuses_everything(
    model_dir: Path, tmp_path: Path, versions: list[str]
) -> None:
    empty = tmp_path / "no-keys"
    empty.mkdir()
    with pytest.raises(NoModelError):
        ModelRegistry(model_dir, "iris", empty).load()


@pytest.mark.parametrize("bad", ["../iris", "latest", "", "20261127T153000Z/../x", "nope"])
def test_unknown_or_malformed_version_is_keyerror(
    bad: str, model_dir: Path, trusted_dir: Path, versions: list[str]
) -> None:
    reg, _ = serving(model_dir, trusted_dir, versions)
    with pytest.raises(KeyError):
        reg.activate(bad)
    with pytest.raises(KeyError):
        reg.activate("20000101T000000Z")


def test_loaded_model_contract(model_dir: Path, trusted_dir: Path, versions: list[str]) -> None:
    reg = ModelRegistry(model_dir, "iris", trusted_dir)
    model = reg.load()
    assert isinstance(model, LoadedModel)
    assert model.version == versions[1]  # newest when there is no pointer
    assert model.name == "iris"
    assert model.backend == "numpy-forest"
    assert model.feature_names == ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    assert model.class_names == ["setosa", "versicolor", "virginica"]
    assert model.sha256 == sha256_hex(
        (model_dir / "iris" / versions[1] / "model.joblib").read_bytes()
    )
    proba = model.predict_proba(np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]))
    assert proba.shape == (2, 3) and proba.dtype == np.float64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert proba[0].argmax() == 0 and proba[1].argmax() == 2
    info = model.info()
    json.dumps(info)
    assert info["metrics"]["holdout_accuracy"] >= 0.85
    with pytest.raises(ValueError):
        model.predict_proba(np.zeros((1, 3)))
