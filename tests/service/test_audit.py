"""The hash-chained audit log: verifies, and fails after a line is edited, deleted or swapped."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import httpx
import pytest
from service_support import PASSWORDS, ROW, Server, bearer, run_cli
from waiting import wait_until

from ml_service.audit import AuditLog


def _write(path: Path, n: int, who: str = "t") -> None:
    log = AuditLog(path)
    for i in range(n):
        log.write(
            {
                "time": "t",
                "request_id": f"{who}{i}",
                "user": who,
                "action": "predict",
                "status": 200,
            }
        )
    log.close()


def _verify(*paths: Path | str) -> tuple[int, str]:
    result = run_cli("audit", "verify", *map(str, paths))
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    _write(path, 10)
    return path


def test_untouched_log_verifies(log_file: Path) -> None:
    code, out = _verify(log_file)
    assert code == 0, out
    assert "10 records" in out


def test_edited_line_fails(log_file: Path) -> None:
    lines = log_file.read_text().splitlines()
    record = json.loads(lines[4])
    record["user"] = "mallory"
    lines[4] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    log_file.write_text("\n".join(lines) + "\n")
    code, out = _verify(log_file)
    assert code == 1 and "line 5" in out and "edited" in out


def test_edited_line_with_recomputed_hash_fails(log_file: Path) -> None:
    from ml_service.audit import record_hash

    lines = log_file.read_text().splitlines()
    record = json.loads(lines[4])
    record["status"] = 403
    record["hash"] = record_hash(record)
    # written in the canonical form, so that only the chain link can give it away
    lines[4] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    log_file.write_text("\n".join(lines) + "\n")
    code, out = _verify(log_file)
    assert code == 1 and "line 6" in out


def test_deleted_line_fails(log_file: Path) -> None:
    lines = log_file.read_text().splitlines()
    del lines[3]
    log_file.write_text("\n".join(lines) + "\n")
    code, out = _verify(log_file)
    assert code == 1 and "line 4" in out and "removed" in out


def test_deleted_first_line_fails(log_file: Path) -> None:
    lines = log_file.read_text().splitlines()
    log_file.write_text("\n".join(lines[1:]) + "\n")
    code, out = _verify(log_file)
    assert code == 1 and "first lines were removed" in out
    # ... unless it is declared the continuation of a rotated file
    code, out = _verify(log_file, "--continuation")
    assert code == 0 and "continuation" in out


def test_deleted_last_line_fails_thanks_to_the_head_file(log_file: Path) -> None:
    lines = log_file.read_text().splitlines()
    log_file.write_text("\n".join(lines[:-1]) + "\n")
    code, out = _verify(log_file)
    assert code == 1 and "removed at the end" in out


def test_swapped_lines_fail(log_file: Path) -> None:
    lines = log_file.read_text().splitlines()
    lines[2], lines[6] = lines[6], lines[2]
    log_file.write_text("\n".join(lines) + "\n")
    code, out = _verify(log_file)
    assert code == 1 and "line 3" in out


def test_chain_continues_across_logrotate(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.write({"n": 1})
    log.write({"n": 2})
    path.rename(tmp_path / "audit.log.1")  # logrotate 'create' mode
    log.write({"n": 3})
    log.close()
    assert path.exists()
    code, out = _verify(tmp_path / "audit.log.1", path)
    assert code == 0 and "3 records" in out, out
    code, out = _verify(path, tmp_path / "audit.log.1")  # wrong order
    assert code == 1


def test_live_log_empty_after_rotation_verifies(tmp_path: Path) -> None:
    """Rotated with no record since: the new live file is empty and the chain ends in the
    rotated one (the case a rotation right after the last request leaves)."""
    path = tmp_path / "audit.log"
    _write(path, 5)
    path.rename(tmp_path / "audit.log.1")
    path.touch()
    code, out = _verify(tmp_path / "audit.log.1", path)
    assert code == 0 and "5 records" in out, out
    # A line cut from the end of the rotated file still shows against the head file.
    rotated = tmp_path / "audit.log.1"
    rotated.write_text("".join(rotated.read_text().splitlines(keepends=True)[:-1]))
    code, out = _verify(rotated, path)
    assert code == 1, out


def test_concurrent_processes_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write, args=(path, 300, f"p{i}")) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    code, out = _verify(path)
    assert code == 0 and "900 records" in out, out


def test_service_audit_records(
    server: Server, client: httpx.Client, tokens: dict[str, str]
) -> None:
    password = PASSWORDS["paul-predictor"]
    r = client.post("/predict", json={"features": ROW}, headers=bearer(tokens["predictor"]))
    request_id = r.headers["x-request-id"]
    bad = client.post(
        "/token", data={"username": "paul-predictor", "password": "wrong " + password}
    )
    assert bad.status_code == 401
    audit = server.deployment.audit_log
    # Each record is written after its response has been sent: wait for both.
    ids = (request_id, bad.headers["x-request-id"])
    raw = wait_until(
        lambda: (text := audit.read_text()) and all(i in text for i in ids) and text,
        "the audit records of both requests",
    )
    assert password not in raw and tokens["predictor"] not in raw and "wrong " not in raw
    records = [json.loads(x) for x in raw.splitlines()]
    rec = next(x for x in records if x["request_id"] == request_id)
    assert rec["user"] == "paul-predictor" and rec["role"] == "predictor"
    assert rec["action"] == "predict" and rec["outcome"] == "success" and rec["status"] == 200
    assert rec["model_version"] and rec["client_ip"] == "127.0.0.1" and rec["latency_ms"] > 0
    login = next(x for x in records if x["request_id"] == bad.headers["x-request-id"])
    assert (
        login["action"] == "auth.login" and login["outcome"] == "denied" and login["status"] == 401
    )
    code, out = _verify(audit)
    assert code == 0, out
