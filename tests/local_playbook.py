"""Run a playbook on the controller itself, the way the role tests render templates."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any


def run_local_playbook(
    playbook: Path, extra: dict[str, Any], *flags: str
) -> subprocess.CompletedProcess[str]:
    """``ansible-playbook FLAGS`` on localhost with this interpreter and ``extra`` as vars."""
    ansible_playbook = shutil.which("ansible-playbook") or str(
        Path(sys.executable).parent / "ansible-playbook"
    )
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_LOCALHOST_WARNING": "0"}
    return subprocess.run(
        [
            ansible_playbook,
            "-i",
            "localhost,",
            "-e",
            f"ansible_python_interpreter={sys.executable}",
            "-e",
            json.dumps(extra),
            *flags,
            str(playbook),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def role_playbook(role: Path, name: str, body: str) -> str:
    """A play on localhost that loads ROLE's defaults and vars as the role would, then BODY
    (its own `vars:` and `tasks:`, indented as play keys)."""
    files = [role / "defaults" / "main.yml", role / "vars" / "main.yml"]
    vars_files = "".join(f"    - {f}\n" for f in files if f.is_file())
    header = (
        f"- name: {name}\n  hosts: localhost\n  connection: local\n  gather_facts: false\n"
        f"  vars_files:\n{vars_files}"
    )
    return header + body.lstrip("\n")
