"""Hash-chained JSON audit log, shared by all workers, safe across logrotate.

Each line is one JSON object with ``seq`` (position in the chain), ``prev``
(the previous record's hash) and ``hash`` = SHA-256 of the record's canonical
JSON without ``hash``. Editing, deleting or reordering a line breaks the chain
from that point on.

The canonical form (:func:`canonical`) is orjson's compact output with sorted
keys, with every character that some reader takes for a line break or a control
code (U+0085 and the other C1 controls, U+2028, U+2029, the bidirectional
overrides) written as a ``\\uXXXX`` escape; orjson already escapes U+0000-U+001F.
A line is valid only if its bytes are exactly the canonical form of the record
it parses to, so duplicate keys, reordered keys or extra whitespace (which
``grep`` and ``jq`` would read differently from the verifier) break it too.

Several worker processes append to the same file. The chain head (last seq and
hash) lives in ``<audit>.head``; a writer takes an exclusive ``flock`` on that
file, reads the head, appends its line, and writes the new head, so records are
totally ordered and the chain continues across a rotation (logrotate ``create``
mode: the file is renamed, the next write notices the new inode and opens a
fresh file whose first record points at the last record of the rotated one).
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import os
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .audit_anchors import open_log

GENESIS = "0" * 64

# UTF-8 of U+0080-U+009F (C1 controls, NEL among them), U+2028-U+202E (line and paragraph
# separators, bidirectional embeddings and overrides) and U+2066-U+2069 (bidi isolates).
_UNSAFE = re.compile(rb"\xc2[\x80-\x9f]|\xe2\x80[\xa8-\xae]|\xe2\x81[\xa6-\xa9]")


def _escape(match: re.Match[bytes]) -> bytes:
    return b"\\u%04x" % ord(match.group().decode())


def canonical(record: dict[str, Any]) -> bytes:
    """The one serialisation of a record: the hash input and (with ``hash``) the line."""
    data = orjson.dumps(record, option=orjson.OPT_SORT_KEYS)
    if b"\xc2" in data or b"\xe2" in data:  # every unsafe sequence starts with one of them
        return _UNSAFE.sub(_escape, data)
    return data


def record_hash(record: dict[str, Any]) -> str:
    body = {k: v for k, v in record.items() if k != "hash"}
    return hashlib.sha256(canonical(body)).hexdigest()


class AuditLog:
    def __init__(self, path: Path) -> None:
        self._path = path
        self._head_path = path.with_name(path.name + ".head")
        self._head_fd = os.open(self._head_path, os.O_RDWR | os.O_CREAT, 0o640)
        self._fd = -1
        self._ino = -1
        # flock does not order threads of one process (the model loader writes from a thread).
        self._thread_lock = threading.Lock()
        self._queue: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._open()

    def _open(self) -> None:
        if self._fd >= 0:
            # Forget the number before anything can fail: the kernel reuses it at once (for a
            # client's socket), and a second close would cut that connection.
            fd, self._fd, self._ino = self._fd, -1, -1
            os.close(fd)
        self._fd = os.open(self._path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._ino = os.fstat(self._fd).st_ino

    def _reopen_if_rotated(self) -> None:
        try:
            ino = os.stat(self._path).st_ino
        except FileNotFoundError:
            ino = -1
        if self._fd < 0 or ino != self._ino:
            self._open()

    def _read_head(self) -> tuple[int, str]:
        raw = os.pread(self._head_fd, 256, 0)
        try:
            seq_text, prev = raw.decode().split()
            return int(seq_text), prev
        except ValueError:
            return -1, GENESIS

    def write(self, record: dict[str, Any]) -> None:
        self.write_many([record])

    def write_many(self, records: list[dict[str, Any]]) -> None:
        """Chain and append ``records`` in order under one lock, in one write: all or none
        (an OSError means none of them is in the chain: the head is not moved)."""
        with self._thread_lock:
            self._write_locked(records)

    async def append(self, record: dict[str, Any]) -> None:
        """Write ``record`` together with the records of the other requests that reach this
        point in the same turn of the event loop (group commit: one lock, one ``write``), and
        return once it is in the file; raises the OSError of a failed write."""
        loop = asyncio.get_running_loop()
        written = loop.create_future()
        self._queue.append((record, written))
        if len(self._queue) == 1:
            loop.call_soon(self._write_queued)
        await written

    def _write_queued(self) -> None:
        batch, self._queue = self._queue, []
        if not batch:
            return
        try:
            self.write_many([record for record, _ in batch])
        except OSError as exc:
            for _, written in batch:
                if not written.done():
                    written.set_exception(OSError(exc.errno, exc.strerror))
            return
        for _, written in batch:
            if not written.done():
                written.set_result(None)

    def _write_locked(self, records: list[dict[str, Any]]) -> None:
        fcntl.flock(self._head_fd, fcntl.LOCK_EX)
        try:
            self._reopen_if_rotated()
            seq, prev = self._read_head()
            lines = []
            for record in records:
                seq += 1
                record["seq"] = seq
                record["prev"] = prev
                prev = hashlib.sha256(canonical(record)).hexdigest()  # record_hash: no "hash" yet
                record["hash"] = prev
                lines.append(canonical(record))
            lines.append(b"")
            data = memoryview(b"\n".join(lines))
            while data:
                data = data[os.write(self._fd, data) :]
            head = f"{seq} {prev}".encode().ljust(100)
            os.pwrite(self._head_fd, head, 0)
        finally:
            fcntl.flock(self._head_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        self._write_queued()  # nothing queued is lost at shutdown
        for fd in (self._fd, self._head_fd):
            if fd >= 0:
                os.close(fd)
        self._fd = self._head_fd = -1


@dataclass
class VerifyResult:
    ok: bool
    records: int
    message: str
    first_seq: int | None = None
    last_hash: str | None = None
    last_seq: int | None = None


def verify_lines(
    lines: Iterable[bytes], prev_hash: str | None = None, prev_seq: int | None = None
) -> VerifyResult:
    """Check a chain. Without ``prev_hash`` the first record must start the chain (seq 0,
    prev = genesis) or is accepted as the continuation of a rotated file."""
    count = 0
    first_seq = None
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            return VerifyResult(False, count, f"line {lineno}: empty line")
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return VerifyResult(False, count, f"line {lineno}: not JSON")
        if not isinstance(record, dict) or not {"seq", "prev", "hash"} <= record.keys():
            return VerifyResult(False, count, f"line {lineno}: not an audit record")
        if raw != canonical(record) + b"\n":
            return VerifyResult(
                False,
                count,
                f"line {lineno}: not in canonical form (duplicate or reordered keys, "
                "whitespace or escapes changed): readers may see other values than the hash covers",
            )
        if record_hash(record) != record["hash"]:
            return VerifyResult(
                False, count, f"line {lineno}: content does not match its hash (edited)"
            )
        if prev_hash is None:
            first_seq = record["seq"]
            if record["seq"] == 0 and record["prev"] != GENESIS:
                return VerifyResult(False, count, f"line {lineno}: seq 0 must start from genesis")
        else:
            if record["prev"] != prev_hash or record["seq"] != (prev_seq or 0) + 1:
                return VerifyResult(
                    False,
                    count,
                    f"line {lineno}: breaks the chain (expected seq {(prev_seq or 0) + 1} after "
                    f"{prev_hash[:12]}…, found seq {record['seq']}): a record was removed, "
                    "reordered or inserted",
                )
        prev_hash, prev_seq = record["hash"], record["seq"]
        count += 1
    return VerifyResult(True, count, "ok", first_seq, prev_hash, prev_seq)


def _head_of(path: Path) -> tuple[int, str] | None:
    head = path.with_name(path.name + ".head")
    try:
        seq_text, digest = head.read_text().split()
        return int(seq_text), digest
    except (OSError, ValueError):
        return None


def verify_files(paths: list[Path], allow_continuation: bool = False) -> VerifyResult:
    """Verify one file, or several in chronological order (oldest first) as one chain.

    The first record must start the chain (seq 0) unless ``allow_continuation`` (a
    rotated file checked on its own). For the live file, the ``.head`` file written
    with every record also reveals lines cut from the end.
    """
    prev_hash: str | None = None
    prev_seq: int | None = None
    total = 0
    first_seq = None
    for path in paths:
        head = _head_of(path)  # read before the file: a concurrent writer only adds lines
        with open_log(path) as fh:
            result = verify_lines(fh, prev_hash, prev_seq)
        if not result.ok:
            return VerifyResult(False, total + result.records, f"{path}: {result.message}")
        if first_seq is None:
            first_seq = result.first_seq
        total += result.records
        # An empty file (a live log rotated just before) carries the chain on unchanged.
        prev_hash, prev_seq = result.last_hash, result.last_seq
        cut = head is not None and prev_seq is not None and head[0] >= prev_seq
        if cut and (head[0] > prev_seq or head[1] != prev_hash):  # type: ignore[index,operator]
            return VerifyResult(
                False,
                total,
                f"{path}: ends at seq {prev_seq} but the head file says {head[0]} "  # type: ignore[index]
                "(lines removed at the end)",
            )
    if first_seq not in (None, 0) and not allow_continuation:
        return VerifyResult(
            False,
            total,
            f"chain starts at seq {first_seq}, not 0: the first lines were removed "
            "(for a rotated file checked alone, pass --continuation or give the older files first)",
        )
    note = ""
    if first_seq not in (None, 0):
        note = f" (chain starts at seq {first_seq}: continuation of a rotated file)"
    return VerifyResult(True, total, f"ok: {total} records{note}", first_seq, prev_hash)
