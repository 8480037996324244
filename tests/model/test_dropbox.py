"""The drop box import: only what is signed by a trusted key gets into the registry, as the
bytes that were verified; everything else stays out and is named with its reason."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest
from signed_models import SigningKeys, make_signed_model

from ml_service.model import ModelRegistry
from ml_service.model.artifact import write_artifact
from ml_service.model.dropbox import DropboxUnreadable, import_from_dropbox
from ml_service.model.signing import load_private_key


@pytest.fixture
def dropbox(tmp_path: Path) -> Path:
    d = tmp_path / "dropbox"
    (d / "iris").mkdir(parents=True)
    return d


@pytest.fixture
def registry(model_dir: Path, trusted_dir: Path) -> ModelRegistry:
    reg = ModelRegistry(model_dir, "iris", trusted_dir)
    reg.load()
    return reg


def _files(version_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in version_dir.iterdir()}


def _by_version(results: list) -> dict[str, tuple[str, str | None]]:
    return {r.version: (r.status, r.reason) for r in results}


def test_a_signed_version_is_copied_byte_for_byte_and_not_activated(
    dropbox: Path, registry: ModelRegistry, session_keys: SigningKeys
) -> None:
    active = registry.active.version  # type: ignore[union-attr]
    src = make_signed_model(dropbox, session_keys, random_state=7)
    (result,) = import_from_dropbox(dropbox, registry)
    assert (result.version, result.status, result.reason) == (src.name, "imported", None)
    assert _files(registry.name_dir / src.name) == _files(src)
    listed = {v.version: v.status for v in registry.versions()}
    assert listed[src.name] == "available" and listed[active] == "active"
    assert not [p for p in registry.name_dir.iterdir() if p.name.startswith(".import-")]
    # Importing again changes nothing and says so.
    assert _by_version(import_from_dropbox(dropbox, registry)) == {src.name: ("present", None)}


@pytest.mark.parametrize(
    ("spoil", "reason"),
    [
        (lambda d: (d / "manifest.sig").unlink(), "missing_signature"),
        (lambda d: (d / "model.joblib").write_bytes(b"not the signed model"), "hash_mismatch"),
        (lambda d: (d / "extra.py").write_text("import os"), "unexpected_file"),
    ],
    ids=["unsigned", "tampered", "extra-file"],
)
def test_a_version_that_does_not_verify_stays_out(
    dropbox: Path, registry: ModelRegistry, session_keys: SigningKeys, spoil, reason: str
) -> None:
    src = make_signed_model(dropbox, session_keys, random_state=8)
    spoil(src)
    (result,) = import_from_dropbox(dropbox, registry)
    assert (result.status, result.reason) == ("refused", reason), result
    assert result.detail
    assert not (registry.name_dir / src.name).exists()


def test_a_version_signed_by_an_untrusted_key_stays_out(
    dropbox: Path, registry: ModelRegistry, other_keys: SigningKeys
) -> None:
    src = make_signed_model(dropbox, other_keys, random_state=9)
    assert _by_version(import_from_dropbox(dropbox, registry)) == {
        src.name: ("refused", "untrusted_key")
    }
    assert not (registry.name_dir / src.name).exists()


def test_a_registry_version_is_never_replaced(
    dropbox: Path, registry: ModelRegistry, session_keys: SigningKeys, versions: list[str]
) -> None:
    """A different, validly signed artifact under a version the registry already holds."""
    taken, other = versions
    before = _files(registry.name_dir / taken)
    files = {
        n: (registry.name_dir / other / n).read_bytes() for n in ("model.joblib", "metadata.json")
    }
    write_artifact(dropbox, "iris", files, load_private_key(session_keys.private_key), taken)
    assert _by_version(import_from_dropbox(dropbox, registry)) == {
        taken: ("refused", "version_exists")
    }
    assert _files(registry.name_dir / taken) == before


def test_links_odd_names_and_temp_dirs(
    tmp_path: Path, dropbox: Path, registry: ModelRegistry, versions: list[str]
) -> None:
    """A symbolic link is not followed (it could point at anything the API can read), a
    name that is not a version is refused, and a training run's hidden temp dir is skipped."""
    outside = tmp_path / "outside"
    shutil.copytree(registry.name_dir / versions[0], outside)
    (dropbox / "iris" / "20300101T000000Z").symlink_to(outside)
    (dropbox / "iris" / "latest").mkdir()
    (dropbox / "iris" / ".tmp-20300102T000000Z-ab12").mkdir()
    assert _by_version(import_from_dropbox(dropbox, registry)) == {
        "20300101T000000Z": ("refused", "missing_directory"),
        "latest": ("refused", "bad_version_name"),
    }


def test_an_empty_or_missing_dropbox_imports_nothing(
    tmp_path: Path, registry: ModelRegistry
) -> None:
    assert import_from_dropbox(tmp_path / "absent", registry) == []
    (tmp_path / "empty").mkdir()
    assert import_from_dropbox(tmp_path / "empty", registry) == []


def test_two_imports_at_once_copy_once(
    dropbox: Path, registry: ModelRegistry, model_dir: Path, trusted_dir: Path,
    session_keys: SigningKeys,
) -> None:  # fmt: skip
    """Two workers importing the same version: one copies it, the other finds it present."""
    src = make_signed_model(dropbox, session_keys, random_state=12)
    other = ModelRegistry(model_dir, "iris", trusted_dir)
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def run(reg: ModelRegistry) -> None:
        barrier.wait()
        outcomes.extend(r.status for r in import_from_dropbox(dropbox, reg))

    threads = [threading.Thread(target=run, args=(r,)) for r in (registry, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["imported", "present"]
    assert _files(registry.name_dir / src.name) == _files(src)


def test_a_dropbox_the_api_may_not_read_is_a_named_error(
    dropbox: Path, registry: ModelRegistry
) -> None:
    """Wrong group or mode on the drop box: a clear error for the route, not a crash."""
    (dropbox / "iris").chmod(0o000)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child is the API's unprivileged UID; root would read it anyway
        os.close(read)
        outcome = b"no error"
        try:
            if os.getuid() == 0:
                os.setuid(65534)
            import_from_dropbox(dropbox, registry)
        except DropboxUnreadable as exc:
            outcome = str(exc).encode()
        except BaseException as exc:  # reported to the parent
            outcome = repr(exc).encode()
        os.write(write, outcome)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        outcome = pipe.read().decode()
    os.waitpid(pid, 0)
    (dropbox / "iris").chmod(0o755)
    assert "the API may not read iris/ in the drop box" in outcome
