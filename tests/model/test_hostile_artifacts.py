"""Files read before the signature check are hostile (issue 17, finding 3).

Each case is a version directory that someone who can write the registry could leave there.
Listing, loading, following the pointer and activating must refuse it within 2 s, count and
report it, and keep serving the verified model: never raise anything but a refusal, never hang.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import REGISTRY

from ml_service.model import ModelIntegrityError, ModelRegistry

ROW = np.array([[5.1, 3.5, 1.4, 0.2]])
HOSTILE = "20991231T235959Z"  # newer than every real version: tried first where order matters
DEADLINE = 2.0


def _nested_signature(d: Path, good: Path) -> None:
    shutil.copy(good / "manifest.json", d / "manifest.json")
    (d / "manifest.sig").write_text("[" * 100_000)


def _nested_signature_under_the_cap(d: Path, good: Path) -> None:
    # Below 64 KiB, so the parser itself meets it (RecursionError in json).
    shutil.copy(good / "manifest.json", d / "manifest.json")
    (d / "manifest.sig").write_text("[" * 60_000)


def _fifo_manifest(d: Path, good: Path) -> None:
    os.mkfifo(d / "manifest.json")
    shutil.copy(good / "manifest.sig", d / "manifest.sig")


def _fifo_signature(d: Path, good: Path) -> None:
    shutil.copy(good / "manifest.json", d / "manifest.json")
    os.mkfifo(d / "manifest.sig")


def _symlinked_manifest(d: Path, good: Path) -> None:
    (d / "manifest.json").symlink_to(good / "manifest.json")
    shutil.copy(good / "manifest.sig", d / "manifest.sig")


def _huge_manifest(d: Path, good: Path) -> None:
    with open(d / "manifest.json", "wb") as fh:
        fh.truncate(512 * 1024 * 1024)  # sparse: costs no disk, only a reader's memory
    shutil.copy(good / "manifest.sig", d / "manifest.sig")


def _manifest_is_a_directory(d: Path, good: Path) -> None:
    (d / "manifest.json").mkdir()
    shutil.copy(good / "manifest.sig", d / "manifest.sig")


def _symlinked_version(d: Path, good: Path) -> None:
    d.rmdir()
    d.symlink_to(good, target_is_directory=True)


CASES: dict[str, Callable[[Path, Path], None]] = {
    "signature_of_100000_brackets": _nested_signature,
    "signature_of_60000_brackets": _nested_signature_under_the_cap,
    "fifo_manifest": _fifo_manifest,
    "fifo_signature": _fifo_signature,
    "symlinked_manifest": _symlinked_manifest,
    "manifest_over_64k": _huge_manifest,
    "manifest_is_a_directory": _manifest_is_a_directory,
    "symlinked_version_directory": _symlinked_version,
}


def within_deadline(func: Callable[[], Any]) -> tuple[str, Any]:
    """Run ``func`` in a thread; ("returned", value) or ("raised", exc), failing past 2 s."""
    outcome: list[tuple[str, Any]] = []

    def run() -> None:
        try:
            outcome.append(("returned", func()))
        except BaseException as exc:  # the test inspects whatever escaped
            outcome.append(("raised", exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(DEADLINE)
    if thread.is_alive():
        pytest.fail(f"{getattr(func, '__name__', func)} did not return within {DEADLINE} s")
    return outcome[0]


def _refusals() -> float:
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name == "ml_model_integrity_failures":
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


@pytest.fixture
def hostile(model_dir: Path, versions: list[str], request: pytest.FixtureRequest) -> Iterator[Path]:
    d = model_dir / "iris" / HOSTILE
    d.mkdir()
    CASES[request.param](d, model_dir / "iris" / versions[-1])
    yield d
    # A reader left blocked on a FIFO (by a build without the fix) gets EOF and ends.
    for fifo in d.glob("*"):
        if fifo.is_fifo():
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


@pytest.mark.parametrize("hostile", list(CASES), indirect=True)
def test_hostile_version_is_refused_without_crash_or_hang(
    model_dir: Path, trusted_dir: Path, versions: list[str], hostile: Path
) -> None:
    reports: list[tuple[str, str]] = []
    reg = ModelRegistry(
        model_dir, "iris", trusted_dir, on_integrity_failure=lambda v, r: reports.append((v, r))
    )
    reg.activate(versions[0])
    before = reg.active
    refusals = _refusals()

    kind, listed = within_deadline(reg.versions)
    assert kind == "returned", listed
    status = {v.version: v for v in listed}[HOSTILE]
    assert status.status == "refused" and status.reason, status

    kind, exc = within_deadline(lambda: reg.activate(HOSTILE))
    assert kind == "raised" and isinstance(exc, ModelIntegrityError), exc
    assert reg.active is before

    # Another worker activated it: following the pointer refuses it as well.
    (model_dir / "iris" / "ACTIVE").write_text(f"{HOSTILE}\n{versions[0]}\n")
    kind, exc = within_deadline(reg.refresh)
    assert kind == "returned", exc
    assert reg.active is before
    assert reg.active.predict(ROW).shape == (1,)

    # A worker starting now skips it and serves the previous version.
    fresh = ModelRegistry(model_dir, "iris", trusted_dir)
    kind, model = within_deadline(fresh.load)
    assert kind == "returned", model
    assert model.version != HOSTILE

    assert reports and all(v == HOSTILE for v, _ in reports), reports
    assert _refusals() > refusals
