"""The logrotate role's rules, run by the real logrotate against a real audit writer.

The role's template is rendered with Ansible for logs in a temporary directory, checked
with ``logrotate --debug`` (what the role runs before writing it), then used to rotate
for real, twice, while an :class:`~ml_service.audit.AuditLog` keeps writing: the hash
chain verifies over the compressed, the rotated and the current file, oldest first; an
edited line in a rotated file, a log rewritten as a whole (caught by the anchors root
records) and a log cut short are all reported. The role's input checks refuse bad entries
before anything is written.
"""

from __future__ import annotations

import getpass
import grp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from local_playbook import role_playbook, run_local_playbook

from ml_service.audit import AuditLog

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "logrotate"
# Installed by .ci/apt-packages.txt: a missing logrotate fails these tests, it does not skip them.
LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"

# The play after its header (local_playbook.role_playbook).
PLAYBOOK = """
  tasks:
    - name: Check the input as the role does
      ansible.builtin.include_tasks: {role}/tasks/validate.yml
    - name: Render the rules
      ansible.builtin.template:
        src: {role}/templates/appliance.logrotate.j2
        dest: {out}
        mode: "0644"
"""


def _ansible(tmp: Path, out: Path, extra: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    playbook = tmp / "render.yml"
    playbook.write_text(
        role_playbook(
            ROLE, "Render the logrotate role's rules", PLAYBOOK.format(role=ROLE, out=out)
        ),
        encoding="utf-8",
    )
    return run_local_playbook(playbook, extra)


def _entry(log_dir: Path, **more: Any) -> dict[str, Any]:
    return {
        "name": "audit",
        "paths": [str(log_dir / "audit.log")],
        "owner": getpass.getuser(),
        "group": grp.getgrgid(os.getgid()).gr_name,
        **more,
    }


PLACEHOLDER = "/placeholder-log-dir"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The role's rules for one audit log, rendered once; each test puts in its own directory."""
    tmp = tmp_path_factory.mktemp("logrotate")
    out = tmp / "appliance.logrotate"
    result = _ansible(tmp, out, {"logrotate_files": [_entry(Path(PLACEHOLDER))]})
    assert result.returncode == 0, f"rendering failed:\n{result.stdout}\n{result.stderr}"
    return out.read_text()


@pytest.fixture
def rules(rendered: str, tmp_path: Path) -> tuple[Path, Path]:
    log_dir = tmp_path / "logs"
    log_dir.mkdir(mode=0o750)
    conf = tmp_path / "appliance.logrotate"
    conf.write_text(rendered.replace(PLACEHOLDER, str(log_dir)))
    return conf, log_dir


def _rotate(rules: Path, state: Path) -> None:
    result = subprocess.run(
        [LOGROTATE, "--force", "--state", str(state), str(rules)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _write(log: AuditLog, n: int, who: str) -> None:
    for i in range(n):
        log.write({"time": "t", "request_id": f"{who}{i}", "user": who, "action": "predict"})


def _verify(*args: str) -> tuple[int, str]:
    result = subprocess.run(
        [sys.executable, "-m", "ml_service", "audit", "verify", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stdout + result.stderr


def _anchor(audit: Path) -> str:
    """What the root anchor timer records: the chain head of the moment."""
    seq, digest = audit.with_name(audit.name + ".head").read_text().split()
    return f"seq={seq} hash={digest}\n"


@pytest.fixture
def rotated(rules: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """Five records, rotation, five more, rotation, five more: .2.gz, .1 and the live file."""
    conf, log_dir = rules
    audit = log_dir / "audit.log"
    anchors = tmp_path / "anchors"
    log = AuditLog(audit)
    for round_ in range(3):
        _write(log, 5, f"r{round_}")
        with anchors.open("a") as fh:
            fh.write(_anchor(audit))
        if round_ < 2:
            _rotate(conf, tmp_path / "state")
    log.close()
    return audit, anchors


def test_rendered_rules_pass_logrotate_debug(rules: tuple[Path, Path]) -> None:
    conf, log_dir = rules
    text = conf.read_text()
    assert f"{log_dir}/audit.log {{" in text
    assert "nocreate" in text and "delaycompress" in text
    result = subprocess.run(
        [LOGROTATE, "--debug", "--state", "/dev/null", str(conf)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_writer_follows_rotation_and_the_chain_spans_every_file(
    rotated: tuple[Path, Path],
) -> None:
    audit, anchors = rotated
    names = sorted(p.name for p in audit.parent.iterdir() if p.name.startswith("audit.log"))
    assert names == ["audit.log", "audit.log.1", "audit.log.2.gz", "audit.log.head"]
    assert len(audit.read_text().splitlines()) == 5  # the writer moved on to the new file
    code, out = _verify("--rotated", "--anchors", str(anchors), str(audit))
    assert code == 0, out
    assert "ok: 15 records" in out and "3 anchors match" in out
    # The same files named one by one, oldest first, verify too; in the wrong order they do not.
    series = [str(audit) + ".2.gz", str(audit) + ".1", str(audit)]
    assert _verify(*series)[0] == 0
    assert _verify(*reversed(series))[0] == 1


def test_an_edited_line_in_a_rotated_file_is_reported(rotated: tuple[Path, Path]) -> None:
    audit, _ = rotated
    rotated_file = audit.with_name("audit.log.1")
    lines = rotated_file.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"user":"r1"', '"user":"rX"')
    rotated_file.write_text("".join(lines))
    code, out = _verify("--rotated", str(audit))
    assert code == 1
    assert "audit.log.1: line 3: content does not match its hash" in out


def test_a_log_rewritten_as_a_whole_is_caught_by_the_anchors(
    rotated: tuple[Path, Path], tmp_path: Path
) -> None:
    audit, anchors = rotated
    # Whoever holds the service account writes a fresh, self-consistent chain of 15 records.
    forged_dir = tmp_path / "forged"
    forged_dir.mkdir()
    forged = AuditLog(forged_dir / "audit.log")
    _write(forged, 15, "mallory")
    forged.close()
    for old in audit.parent.glob("audit.log*"):
        old.unlink()
    for new in forged_dir.iterdir():
        shutil.copy(new, audit.parent / new.name)
    assert _verify(str(audit))[0] == 0  # the chain alone cannot tell
    code, out = _verify("--anchors", str(anchors), str(audit))
    assert code == 1
    assert "the log was rewritten" in out


def test_a_log_cut_after_its_last_anchor_is_reported(rotated: tuple[Path, Path]) -> None:
    audit, anchors = rotated
    lines = audit.read_bytes().splitlines(keepends=True)
    audit.write_bytes(b"".join(lines[:-2]))
    last = json.loads(lines[-3])
    # Also forge the head file, so that only the anchors can tell.
    audit.with_name("audit.log.head").write_text(f"{last['seq']} {last['hash']}".ljust(100))
    code, out = _verify("--rotated", "--anchors", str(anchors), str(audit))
    assert code == 1
    assert "records were removed" in out


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"paths": ["relative/audit.log"]}, "absolute paths"),
        ({"max_size": "lots"}, "sizes like 100M"),
        ({"owner": "no-such-account-here"}, "must be existing accounts"),
        (
            {"reopen_signal": {"user": getpass.getuser(), "container": "x", "signal": "KILL"}},
            "reopen signal among",
        ),
        (
            {"reopen_signal": {"user": "no-such-podman-user", "container": "x", "signal": "USR1"}},
            "must be existing accounts",
        ),
    ],
)
def test_bad_entries_stop_the_role_with_a_reason(
    tmp_path: Path, change: dict[str, Any], message: str
) -> None:
    out = tmp_path / "appliance.logrotate"
    result = _ansible(tmp_path, out, {"logrotate_files": [_entry(tmp_path, **change)]})
    assert result.returncode != 0
    assert message in result.stdout, result.stdout
    assert not out.exists()


def test_the_same_path_in_two_entries_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "appliance.logrotate"
    entries = [_entry(tmp_path), {**_entry(tmp_path), "name": "again"}]
    result = _ansible(tmp_path, out, {"logrotate_files": entries})
    assert result.returncode != 0
    assert "each path in one entry only" in result.stdout
    assert not out.exists()
