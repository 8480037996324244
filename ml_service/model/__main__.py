"""Offline checks of a model directory, for operators and the integrity-check timer.

    python -m ml_service.model verify --model-dir DIR --trusted-keys DIR [--name iris] [--json]

Verifies the signature and every hash of every version (nothing is unpickled) and
the ACTIVE pointer. Exit 0: the active version (pointer, else newest) verifies;
1: it does not, or no version verifies; 2: usage error. Refused non-active
versions are listed but do not fail the check (they cannot be activated anyway).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from .artifact import is_valid_version, verify_artifact, version_sort_key
from .errors import ModelIntegrityError
from .registry import POINTER_FILE
from .signing import load_trusted_keys


def verify(model_dir: Path, name: str, trusted_dir: Path) -> dict[str, object]:
    name_dir = model_dir / name
    trusted = load_trusted_keys(trusted_dir)
    try:
        entries = [p.name for p in name_dir.iterdir() if p.is_dir() and is_valid_version(p.name)]
    except FileNotFoundError:
        entries = []
    pointer: list[str] = []
    with contextlib.suppress(FileNotFoundError):
        pointer = [
            line.strip()
            for line in (name_dir / POINTER_FILE).read_text().splitlines()
            if line.strip()
        ]
    results = []
    for version in sorted(entries, key=version_sort_key, reverse=True):
        try:
            art = verify_artifact(name_dir / version, name, version, trusted)
        except ModelIntegrityError as exc:
            results.append({"version": version, "ok": False, "reason": exc.reason,
                            "detail": exc.detail})  # fmt: skip
        else:
            results.append({"version": version, "ok": True, "key_id": art.key_id,
                            "trained_at": art.metadata.get("trained_at")})  # fmt: skip
    active = pointer[0] if pointer else (results[0]["version"] if results else None)
    active_ok = any(r["version"] == active and r["ok"] for r in results)
    return {
        "name": name,
        "active": active,
        "active_ok": active_ok,
        "trusted_key_ids": sorted(trusted.keys),
        "versions": results,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m ml_service.model",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="verify every version and the active pointer")
    v.add_argument("--model-dir", type=Path, required=True)
    v.add_argument("--trusted-keys", type=Path, required=True, help="directory of *.pub keys")
    v.add_argument("--name", default="iris")
    v.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    report = verify(args.model_dir, args.name, args.trusted_keys)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for r in report["versions"]:  # type: ignore[attr-defined]
            mark = "*" if r["version"] == report["active"] else " "
            status = "ok" if r["ok"] else f"REFUSED {r['reason']}: {r['detail']}"
            print(f"{mark} {r['version']}  {status}")
        if not report["versions"]:
            print(f"no versions under {args.model_dir / args.name}")
    if not report["active_ok"]:
        print(f"FAILED: active version {report['active']} does not verify", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
