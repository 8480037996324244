"""The audit line is the canonical form of its record (issue 17, findings 4 and 7).

A line that parses to a record whose canonical serialisation differs from the line's bytes
fails ``audit verify``: otherwise ``grep``/``jq`` and the verifier read different records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from service_support import run_cli

from ml_service.audit import AuditLog

SEPARATORS = {
    "LINE SEPARATOR": "\u2028",
    "PARAGRAPH SEPARATOR": "\u2029",
    "NEXT LINE": "\x85",
    "FILE SEPARATOR": "\x1c",
    "VERTICAL TAB": "\x0b",
    "FORM FEED": "\x0c",
    "CARRIAGE RETURN": "\r",
}


def _log(path: Path, records: list[dict[str, object]]) -> None:
    log = AuditLog(path)
    for record in records:
        log.write(record)
    log.close()


def _verify(path: Path) -> tuple[int, str]:
    result = run_cli("audit", "verify", str(path))
    return result.returncode, result.stdout + result.stderr


@pytest.fixture
def log_file(tmp_path: Path) -> Path:
    path = tmp_path / "audit.log"
    _log(path, [{"time": "t", "user": "paul", "action": "predict", "n": i} for i in range(6)])
    return path


def _edit_line(path: Path, index: int, edit) -> None:  # type: ignore[no-untyped-def]
    lines = path.read_bytes().split(b"\n")
    lines[index] = edit(lines[index])
    path.write_bytes(b"\n".join(lines))


def test_untouched_log_verifies(log_file: Path) -> None:
    code, out = _verify(log_file)
    assert code == 0, out


def test_duplicate_key_line_fails_verify(log_file: Path) -> None:
    # json.loads keeps the last "user" (the hash still matches), grep sees "mallory" first.
    _edit_line(log_file, 3, lambda line: b'{"user":"mallory",' + line[1:])
    assert b'"user":"mallory"' in log_file.read_bytes()
    code, out = _verify(log_file)
    assert code == 1, out
    assert "line 4" in out and "canonical" in out, out


@pytest.mark.parametrize(
    "edit",
    [
        pytest.param(lambda line: line.replace(b'","', b'", "', 1), id="whitespace"),
        pytest.param(lambda line: line.replace(b"{", b"{ ", 1), id="leading-space"),
        pytest.param(
            lambda line: b'{"user":"paul",' + line[1:].replace(b',"user":"paul"', b""),
            id="reordered-keys",
        ),
        pytest.param(lambda line: line.replace(b'"t"', b'"\\u0074"', 1), id="needless-escape"),
    ],
)
def test_non_canonical_line_fails_verify(log_file: Path, edit) -> None:  # type: ignore[no-untyped-def]
    before = log_file.read_bytes()
    _edit_line(log_file, 2, edit)
    assert log_file.read_bytes() != before
    code, out = _verify(log_file)
    assert code == 1 and "line 3" in out, out


@pytest.mark.parametrize("char", list(SEPARATORS.values()), ids=list(SEPARATORS))
def test_every_line_separator_is_escaped(tmp_path: Path, char: str) -> None:
    path = tmp_path / "audit.log"
    detail = f"before{char}after"
    _log(path, [{"detail": detail, "n": 0}, {"detail": "plain", "n": 1}])
    raw = path.read_bytes()
    assert char.encode() not in raw, raw
    # Every reader that splits lines on it (Python's splitlines, editors, log shippers) sees
    # exactly the two records, and the escaped text reads back as written.
    lines = raw.decode().splitlines()
    assert len(lines) == 2, lines
    assert json.loads(lines[0])["detail"] == detail
    code, out = _verify(path)
    assert code == 0, out
