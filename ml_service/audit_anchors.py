"""Rotated audit files and the chain anchors kept outside the service account's reach.

logrotate renames ``audit.log`` to ``audit.log.1`` and compresses older ones
(``audit.log.2.gz`` …); :func:`rotated_series` lists them oldest first, as the chain runs.

Whoever holds the service account can rewrite the whole log consistently (every hash
recomputed, a fresh ``.head``), so the chain alone proves nothing against that account. A
root timer (``appliance-audit-anchor``, installed by the ml_service role) therefore copies
the chain head, ``seq=N hash=H``, into the system journal and a root-owned file. Those
anchors cannot be changed by the service account: a rewritten log no longer carries the
anchored hash at the anchored position, and a log cut short ends before its last anchor.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import orjson

ANCHOR = re.compile(r"seq=(\d+) hash=([0-9a-f]{64})")
_ROTATED = re.compile(r"\.(\d+)(\.gz)?$")


def open_log(path: Path) -> IO[bytes]:
    """A plain or gzip-compressed audit file, read as bytes."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return path.open("rb")


def rotated_series(current: Path) -> list[Path]:
    """The rotated files of ``current`` (``NAME.N``, ``NAME.N.gz``) oldest first, then it."""
    rotated: list[tuple[int, Path]] = []
    for candidate in current.parent.glob(current.name + ".*"):
        match = _ROTATED.fullmatch(candidate.name[len(current.name) :])
        if match:
            rotated.append((int(match.group(1)), candidate))
    ordered = [path for _, path in sorted(rotated, key=lambda item: -item[0])]
    if current.exists():
        ordered.append(current)
    return ordered


def parse_anchors(lines: Iterable[str]) -> list[tuple[int, str]]:
    """Anchors from any text that carries ``seq=N hash=H`` (the anchor file, journal output)."""
    anchors: dict[int, str] = {}
    for line in lines:
        match = ANCHOR.search(line)
        if match:
            anchors[int(match.group(1))] = match.group(2)
    return sorted(anchors.items())


@dataclass
class AnchorResult:
    ok: bool
    checked: int
    before_start: int
    message: str


def check_anchors(paths: list[Path], anchors: list[tuple[int, str]]) -> AnchorResult:
    """Compare every anchor with the record at its position in ``paths`` (one chain, oldest
    first, already verified as a chain). Anchors older than the first kept record (pruned
    by retention) are counted, not failed; an anchor past the end means lines were cut."""
    wanted = dict(anchors)
    first_seq: int | None = None
    last_seq: int | None = None
    checked = 0
    for path in paths:
        with open_log(path) as fh:
            for raw in fh:
                record = orjson.loads(raw)
                seq = record["seq"]
                if first_seq is None:
                    first_seq = seq
                last_seq = seq
                expected = wanted.get(seq)
                if expected is None:
                    continue
                checked += 1
                if record["hash"] != expected:
                    return AnchorResult(
                        False,
                        checked,
                        0,
                        f"{path}: record seq {seq} has hash {record['hash'][:12]}…, but the anchor "
                        f"recorded {expected[:12]}…: the log was rewritten",
                    )
    before = sum(1 for seq in wanted if first_seq is None or seq < first_seq)
    beyond = [seq for seq in wanted if last_seq is not None and seq > last_seq]
    if last_seq is None and wanted:
        beyond = list(wanted)
    if beyond:
        return AnchorResult(
            False,
            checked,
            before,
            f"the log ends at seq {last_seq} but an anchor records seq {max(beyond)}: "
            "records were removed",
        )
    return AnchorResult(True, checked, before, f"{checked} anchors match")
