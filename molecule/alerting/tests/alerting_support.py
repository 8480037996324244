"""Plain helpers of the alerting tests (the fixtures are in conftest.py): where the configuration
is, and re-runs of the alertmanager role with other variables. The appliance scenario collects
these tests too, so nothing here names the scenario it runs in."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

AM_URL = "http://localhost:9093/alertmanager"
CONFIG = "/etc/appliance/alertmanager/alertmanager.yml"
# The same file inside the container.
CONTAINER_CONFIG = "/etc/alertmanager/alertmanager.yml"
ALERTMANAGER_ONLY = Path(__file__).resolve().parents[1] / "alertmanager_only.yml"

ANSIBLE_PLAYBOOK = shutil.which("ansible-playbook") or str(
    Path(sys.executable).parent / "ansible-playbook"
)


def run_alertmanager_role(inventory: str, extra_vars: dict[str, Any]) -> tuple[int, str]:
    """alertmanager_only.yml with ``extra_vars`` on top of ``inventory``."""
    proc = subprocess.run(
        [ANSIBLE_PLAYBOOK, "-i", inventory, str(ALERTMANAGER_ONLY), "-e", json.dumps(extra_vars)],
        capture_output=True, text=True, timeout=600, check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
    )  # fmt: skip
    return proc.returncode, proc.stdout + proc.stderr


def flat(text: str) -> str:
    """Output with all whitespace runs collapsed (the yaml callback wraps long lines)."""
    return " ".join(text.split())
