"""service_command's quoting, run by a real shell; sudo is a recording stand-in (this controller
has no service account to switch to; the scenarios run the real sudo on their machines)."""

import subprocess
from pathlib import Path

from service_account import SERVICE_USER, service_command

SUDO_STANDIN = """#!/bin/sh
# Record the switch, then run what follows the user name, as sudo -n -u USER does.
echo "sudo $1 $2 $3" > "$SUDO_LOG"
shift 3
exec "$@"
"""


def _run(tmp_path: Path, line: str) -> tuple[str, str]:
    (tmp_path / "sudo").write_text(SUDO_STANDIN)
    (tmp_path / "sudo").chmod(0o755)
    log = tmp_path / "sudo.log"
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "SUDO_LOG": str(log)}
    out = subprocess.run(["sh", "-c", line], env=env, capture_output=True, text=True, check=True)
    return out.stdout, log.read_text().strip()


def test_command_runs_as_the_service_account_in_its_environment(tmp_path):
    out, switched = _run(tmp_path, service_command(1234, 'echo "$XDG_RUNTIME_DIR $HOME $(pwd)"'))
    assert switched == f"sudo -n -u {SERVICE_USER}"
    assert out.strip() == "/run/user/1234 /var/lib/appliance /"


def test_quotes_and_stdin_reach_the_command_unchanged(tmp_path):
    tricky = 'it\'s a "test"; $(rm -rf /) `id`\n2nd line'
    out, _ = _run(tmp_path, service_command(1, "cat; printf '%s' \"$0\"", stdin=tricky))
    assert out == tricky + "sh"
