"""The Redis ACL of the redis role allows every command the service's Lua scripts and calls
use. Unit tests run Redis without that ACL, so a command missing from it shows only on a
host, as a 503 on the first login (it did, when the throttle began to use HINCRBY)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]


def _allowed() -> set[str]:
    defaults = yaml.safe_load((REPO / "roles/redis/defaults/main.yml").read_text())
    return {c.lower() for c in defaults["redis_api_commands"]}


def _used() -> set[str]:
    source = (REPO / "ml_service/redis_state.py").read_text()
    in_lua = re.findall(r"redis\.call\('([A-Za-z]+)'", source)
    # redis-py methods called on the client (self.client.<command>(...)) and the scripts'
    # own loading (register_script runs EVALSHA, then SCRIPT LOAD on NOSCRIPT).
    on_client = re.findall(r"self\.client\.([a-z]+)\(", source)
    used = {c.lower() for c in in_lua + on_client} - {"register_script", "aclose", "close"}
    if "register_script" in source:
        used |= {"evalsha", "script|load"}
    return used


def test_every_command_the_service_uses_is_allowed() -> None:
    used = _used()
    assert {"incr", "hincrby", "zadd"} <= used, used  # the parser still finds the calls
    assert used - _allowed() == set(), f"missing from redis_api_commands: {used - _allowed()}"
