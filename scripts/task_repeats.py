"""Fail when two Ansible tasks have the same body (module, arguments and conditions; names and
tags aside) anywhere in roles/, playbooks/ or molecule/: `duplicates` does not read YAML, and a
repeated task is the copy issue 12 removed (the apt retry block, the user lookup). Short bodies
(a one-line `include_tasks`, say) are left out: repeating them is how a helper is called."""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import yaml

MIN_CHARS = 120  # a body shorter than this, as canonical JSON, is a call rather than a copy
SKIP_KEYS = {"name", "tags", "block", "rescue", "always"}
PLAY_KEYS = ("pre_tasks", "tasks", "post_tasks", "handlers")


def _tasks(items: object, where: str, found: dict[str, list[str]]) -> None:
    if not isinstance(items, list):
        return
    for task in items:
        if not isinstance(task, dict):
            continue
        for key in ("block", "rescue", "always"):
            _tasks(task.get(key), where, found)
        if "hosts" in task:  # a play
            for key in PLAY_KEYS:
                _tasks(task.get(key), where, found)
            continue
        body = json.dumps(
            {k: v for k, v in task.items() if k not in SKIP_KEYS}, sort_keys=True, default=str
        )
        if len(body) >= MIN_CHARS:
            found[body].append(f"{where}: {task.get('name', '(unnamed)')}")


def repeats(root: Path) -> list[list[str]]:
    found: dict[str, list[str]] = defaultdict(list)
    for top in ("roles", "playbooks", "molecule"):
        for path in sorted((root / top).rglob("*.yml")):
            if "templates" in path.parts or "files" in path.parts:
                continue
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8"))
            except yaml.YAMLError:
                continue  # not Ansible YAML (yamllint reports real syntax errors)
            _tasks(data, str(path.relative_to(root)), found)
    return [places for places in found.values() if len(places) > 1]


def main() -> int:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path.cwd()
    found = repeats(root)
    for places in found:
        print("the same task in:\n  " + "\n  ".join(places))
    print(f"repeated task bodies: {len(found)}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
