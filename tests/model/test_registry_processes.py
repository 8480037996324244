"""Activation and rollback from several worker PROCESSES on one registry at once: every
change to the shared ``ACTIVE`` pointer is kept (no lost update), and serving processes
follow every swap without a failed prediction."""

from __future__ import annotations

import json
import multiprocessing
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np
import pytest
from signed_models import SigningKeys
from waiting import wait_until

from ml_service.model import ModelRegistry
from ml_service.model.artifact import canonical_json, write_artifact
from ml_service.model.signing import load_private_key

PROCESSES = 4
PER_PROCESS = 4
ROUNDS = 2
ROW = np.array([[6.0, 2.9, 4.5, 1.5]])
CTX = multiprocessing.get_context("spawn")


def pointer(model_dir: Path) -> list[str]:
    return (model_dir / "iris" / "ACTIVE").read_text().split()


def add_versions(model_dir: Path, keys: SigningKeys, versions: list[str]) -> None:
    """Re-sign the newest trained version under each name (the same model, other versions)."""
    src = max(p for p in (model_dir / "iris").iterdir() if p.is_dir())
    model = (src / "model.joblib").read_bytes()
    md = json.loads((src / "metadata.json").read_text())
    key = load_private_key(keys.private_key)
    for version in versions:
        files = {"model.joblib": model, "metadata.json": canonical_json({**md, "version": version})}
        write_artifact(model_dir, "iris", files, key, version=version)


def _activate_each(model_dir: Path, trusted: Path, versions: list[str], start: Barrier) -> None:
    reg = ModelRegistry(model_dir, "iris", trusted)
    reg.load()
    start.wait(60)
    for version in versions:
        reg.activate(version)


def _rollback_once(model_dir: Path, trusted: Path, start: Barrier, out: multiprocessing.Queue):
    reg = ModelRegistry(model_dir, "iris", trusted)
    reg.load()
    start.wait(60)
    out.put(reg.rollback().version)


def _run(procs: list[multiprocessing.Process]) -> None:
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
    assert [p.exitcode for p in procs] == [0] * len(procs)


@pytest.mark.parametrize("round_no", range(ROUNDS))
def test_concurrent_activations_from_processes_lose_none(
    model_dir: Path, trusted_dir: Path, session_keys: SigningKeys, round_no: int
) -> None:
    mine = [[f"2030010{p + 1}T0000{i:02d}Z" for i in range(PER_PROCESS)] for p in range(PROCESSES)]
    add_versions(model_dir, session_keys, [v for vs in mine for v in vs])
    start = CTX.Barrier(PROCESSES)
    _run(
        [
            CTX.Process(target=_activate_each, args=(model_dir, trusted_dir, vs, start))
            for vs in mine
        ]
    )
    final = pointer(model_dir)
    # Serialised, each activation pushes the previous head into the history: every version
    # activated is in the pointer once, each process's own in its order.
    activated = [v for vs in mine for v in vs]
    assert sorted(v for v in final if v in activated) == sorted(activated), final
    assert len(final) == len(set(final)), final
    for vs in mine:
        assert [v for v in final if v in vs] == vs[::-1], (vs, final)


def test_concurrent_rollbacks_from_processes_each_go_back_one(
    model_dir: Path, trusted_dir: Path, session_keys: SigningKeys
) -> None:
    chain = [f"20300201T0000{i:02d}Z" for i in range(2 * PROCESSES)]
    add_versions(model_dir, session_keys, chain)
    reg = ModelRegistry(model_dir, "iris", trusted_dir)
    for version in chain:
        reg.activate(version)
    before = pointer(model_dir)
    assert before[: len(chain)] == chain[::-1]
    start = CTX.Barrier(PROCESSES)
    out = CTX.Queue()
    _run(
        [
            CTX.Process(target=_rollback_once, args=(model_dir, trusted_dir, start, out))
            for _ in range(PROCESSES)
        ]
    )
    targets = sorted(out.get(timeout=10) for _ in range(PROCESSES))
    # PROCESSES rollbacks, one after the other: each went one version further back.
    assert targets == sorted(before[1 : PROCESSES + 1]), (targets, before)
    assert pointer(model_dir) == before[PROCESSES:]


def _serve(
    model_dir: Path,
    trusted: Path,
    slot: int,
    versions: list[str],
    current: multiprocessing.Array,
    served: multiprocessing.Array,
    errors: multiprocessing.Queue,
    stop: multiprocessing.Event,
) -> None:
    """A worker: follow the pointer (refresh), predict with the active model, publish which
    version it serves and how many predictions it made."""
    reg = ModelRegistry(model_dir, "iris", trusted)
    reg.load()
    while not stop.is_set():
        try:
            reg.refresh()
            model = reg.active  # what a request handler does: take one reference
            proba = model.predict_proba(ROW)
            assert proba.shape == (1, 3) and np.isclose(proba.sum(), 1.0)
            current[slot] = versions.index(model.version)
            served[slot] += 1
        except BaseException as exc:
            errors.put(repr(exc))
            return


def test_serving_processes_follow_every_swap_without_failures(
    model_dir: Path, trusted_dir: Path, versions: list[str]
) -> None:
    old, new = versions
    admin = ModelRegistry(model_dir, "iris", trusted_dir)
    admin.activate(old)
    admin.activate(new)
    current = CTX.Array("q", 2)
    served = CTX.Array("q", 2)
    errors = CTX.Queue()
    stop = CTX.Event()
    workers = [
        CTX.Process(
            target=_serve, args=(model_dir, trusted_dir, i, versions, current, served, errors, stop)
        )
        for i in range(2)
    ]
    for w in workers:
        w.start()
    try:
        # Starting a process (imports, load) takes long on a loaded machine.
        wait_until(
            lambda: all(n > 0 for n in served) or not errors.empty(),
            "both worker processes serve",
            timeout=120,
        )
        for _ in range(10):
            for swap, target in ((admin.rollback, old), (lambda: admin.activate(new), new)):
                counts = list(served)
                assert swap().version == target
                # Every worker process follows, and goes on serving, before the next swap.
                wait_until(
                    lambda t=target, c=counts: (
                        all(current[i] == versions.index(t) and served[i] > c[i] for i in range(2))
                        or not errors.empty()
                    ),
                    f"both worker processes serve {target}",
                )
                assert errors.empty(), errors.get()
    finally:
        stop.set()
        for w in workers:
            w.join(30)
    assert errors.empty(), errors.get()
    assert [w.exitcode for w in workers] == [0, 0]
