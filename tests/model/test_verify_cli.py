"""python -m ml_service.model verify: the offline check for operators and timers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ml_service.model", "verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_verify_ok_then_tampered(model_dir: Path, trusted_dir: Path, versions: list[str]) -> None:
    args = ("--model-dir", str(model_dir), "--trusted-keys", str(trusted_dir))
    ok = run(*args, "--json")
    assert ok.returncode == 0, ok.stderr
    report = json.loads(ok.stdout)
    assert report["active"] == versions[1] and report["active_ok"]
    assert [v["ok"] for v in report["versions"]] == [True, True]

    # A refused non-active version is listed but does not fail the check.
    (model_dir / "iris" / versions[0] / "model.joblib").write_bytes(b"x")
    partly = run(*args)
    assert partly.returncode == 0
    assert f"  {versions[0]}  REFUSED hash_mismatch" in partly.stdout

    (model_dir / "iris" / "ACTIVE").write_text(versions[0] + "\n")
    bad = run(*args)
    assert bad.returncode == 1
    assert f"active version {versions[0]} does not verify" in bad.stderr


def test_verify_empty_dir_fails(tmp_path: Path, trusted_dir: Path) -> None:
    result = run("--model-dir", str(tmp_path), "--trusted-keys", str(trusted_dir))
    assert result.returncode == 1
