"""The audit log rotated (logrotate's create mode) again and again while several processes
write to it: every record lands exactly once and the chain over all files verifies."""

from __future__ import annotations

import json
import multiprocessing
import os
from pathlib import Path

from service_support import run_cli
from waiting import wait_until

from ml_service.audit import AuditLog

WRITERS = 3
PER_WRITER = 400
ROTATIONS = 4


def _write(path: str, who: str, n: int) -> None:
    log = AuditLog(Path(path))
    for i in range(n):
        log.write({"time": "t", "request_id": f"{who}-{i}", "action": "predict", "status": 200})
    log.close()


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_rotation_with_several_writers_keeps_one_verifiable_chain(tmp_path: Path) -> None:
    live = tmp_path / "audit.log"
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(target=_write, args=(str(live), f"w{i}", PER_WRITER)) for i in range(WRITERS)
    ]
    for p in procs:
        p.start()
    rotated: list[Path] = []
    try:
        for n in range(ROTATIONS):
            # Rotate only once the writers have added to the live file: each rotated file
            # then holds records, and the writers are busy during each rotation.
            wait_until(lambda: _lines(live) >= 40, f"records before rotation {n + 1}")
            target = tmp_path / f"audit.log.{n + 1}"
            os.rename(live, target)  # logrotate "create": rename, then a new empty file
            live.touch(mode=0o640)
            rotated.append(target)
    finally:
        for p in procs:
            p.join(120)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    files = [*rotated, live]  # oldest first
    result = run_cli("audit", "verify", *map(str, files))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{WRITERS * PER_WRITER} records" in result.stdout + result.stderr
    assert all(_lines(f) > 0 for f in rotated), [(_lines(f), f.name) for f in files]
    # Each writer's records, exactly once each, across the files.
    ids = [json.loads(line)["request_id"] for f in files for line in f.read_text().splitlines()]
    assert sorted(ids) == sorted(f"w{w}-{i}" for w in range(WRITERS) for i in range(PER_WRITER))
