"""The root anchor command of the ml_service role, run for real on a chain head.

It reads a file the service account controls, as root: a symlink, a FIFO, an oversized or
malformed head is refused (quickly, and without echoing what it read); a good head becomes
an anchor line that ``audit verify --anchors`` accepts, written once per chain position.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ml_service.audit import AuditLog

ANCHOR = Path(__file__).resolve().parents[2] / "roles/ml_service/files/appliance-audit-anchor"


def _run(head: Path, anchors: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ANCHOR), str(head), str(anchors)],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


def _chain(tmp_path: Path, n: int) -> Path:
    audit = tmp_path / "audit.log"
    log = AuditLog(audit)
    for i in range(n):
        log.write({"time": "t", "request_id": str(i), "action": "predict"})
    log.close()
    return audit


def test_a_head_becomes_one_anchor_that_verify_accepts(tmp_path: Path) -> None:
    audit = _chain(tmp_path, 3)
    anchors = tmp_path / "anchors"
    for _ in range(2):  # the second run finds the chain where it was: no new line
        result = _run(audit.with_name("audit.log.head"), anchors)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("seq=2 hash=")
    assert len(anchors.read_text().splitlines()) == 1
    assert anchors.stat().st_mode & 0o077 == 0
    verify = subprocess.run(
        [
            sys.executable,
            "-m",
            "ml_service",
            "audit",
            "verify",
            "--anchors",
            str(anchors),
            str(audit),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "1 anchors match" in verify.stdout


def test_no_record_yet_is_not_an_error(tmp_path: Path) -> None:
    result = _run(tmp_path / "audit.log.head", tmp_path / "anchors")
    assert result.returncode == 0
    assert not (tmp_path / "anchors").exists()


def test_a_symlinked_head_is_refused_without_reading_its_target(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text(f"7 {'a' * 64}\n")
    head = tmp_path / "audit.log.head"
    head.symlink_to(secret)
    result = _run(head, tmp_path / "anchors")
    assert result.returncode == 1
    assert "refused" in result.stderr
    assert "a" * 64 not in result.stdout + result.stderr
    assert not (tmp_path / "anchors").exists()


def test_a_fifo_head_is_refused_at_once(tmp_path: Path) -> None:
    head = tmp_path / "audit.log.head"
    os.mkfifo(head)
    result = _run(head, tmp_path / "anchors")  # the 10 s timeout would raise on a hang
    assert result.returncode == 1
    assert "not a regular file" in result.stderr


def test_malformed_and_oversized_heads_are_refused(tmp_path: Path) -> None:
    head = tmp_path / "audit.log.head"
    for content in (b"12 nothex\n", b"x" * 4096, b"3 " + b"a" * 64 + b" extra"):
        head.write_bytes(content)
        result = _run(head, tmp_path / "anchors")
        assert result.returncode == 1, content
        assert "not a chain head" in result.stderr
    assert not (tmp_path / "anchors").exists()
