"""The audit log rotated (logrotate's create mode) again and again while several processes
write to it: every record lands exactly once and the chain over all files verifies."""

from __future__ import annotations

import json
import multiprocessing
import os
from multiprocessing.synchronize import Event
from pathlib import Path

from service_support import run_cli
from waiting import wait_until

from ml_service.audit import AuditLog

WRITERS = 3
ROTATIONS = 4
PER_ROTATION = 40  # records the live file holds before it is rotated


def _write(
    path: str, who: str, stop: Event, written: multiprocessing.Queue[tuple[str, int]]
) -> None:
    # Writes until told to stop rather than a fixed count: a fast machine would otherwise
    # finish before the last rotation (CI did, once) and a slow one would rotate an idle log.
    log = AuditLog(Path(path))
    n = 0
    while not stop.is_set():
        log.write({"time": "t", "request_id": f"{who}-{n}", "action": "predict", "status": 200})
        n += 1
    log.close()
    written.put((who, n))


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_rotation_with_several_writers_keeps_one_verifiable_chain(tmp_path: Path) -> None:
    live = tmp_path / "audit.log"
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    written: multiprocessing.Queue[tuple[str, int]] = ctx.Queue()
    procs = [
        ctx.Process(target=_write, args=(str(live), f"w{i}", stop, written)) for i in range(WRITERS)
    ]
    for p in procs:
        p.start()
    rotated: list[Path] = []
    try:
        for n in range(ROTATIONS + 1):
            # Rotate only once the writers have added to the live file: each rotated file
            # then holds records, and the writers are busy during each rotation.
            wait_until(lambda: _lines(live) >= PER_ROTATION, f"records before rotation {n + 1}")
            if n == ROTATIONS:
                break  # the last live file holds records too
            target = tmp_path / f"audit.log.{n + 1}"
            os.rename(live, target)  # logrotate "create": rename, then a new empty file
            live.touch(mode=0o640)
            rotated.append(target)
    finally:
        stop.set()
        counts = dict(written.get(timeout=120) for _ in procs)
        for p in procs:
            p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    files = [*rotated, live]  # oldest first
    result = run_cli("audit", "verify", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{sum(counts.values())} records" in result.stdout + result.stderr
    assert all(_lines(f) >= PER_ROTATION for f in files), [(_lines(f), f.name) for f in files]
    # Each writer's records, exactly once each, across the files.
    ids = [json.loads(line)["request_id"] for f in files for line in f.read_text().splitlines()]
    assert sorted(ids) == sorted(f"{who}-{i}" for who, n in counts.items() for i in range(n))
