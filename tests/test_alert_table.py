"""scripts/alert_table.py: the alert table of docs/alerting.md, generated from the alert rules.

Runs the script on temporary copies of the rules and the docs; the repository is not touched."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "alert_table.py"
RULES = REPO / "files" / "prometheus" / "alerts.yml"
DOCS = REPO / "docs" / "alerting.md"
BEGIN, END = "<!-- alert-table:begin", "<!-- alert-table:end -->"


def _run(rules: Path, docs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(SCRIPT), "--rules", str(rules), "--docs", str(docs), *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def _table(docs: Path) -> list[str]:
    text = docs.read_text(encoding="utf-8")
    return text[text.index(BEGIN) : text.index(END)].splitlines()


@pytest.fixture
def copies(tmp_path: Path) -> tuple[Path, Path]:
    rules, docs = tmp_path / "alerts.yml", tmp_path / "alerting.md"
    shutil.copy(RULES, rules)
    shutil.copy(DOCS, docs)
    return rules, docs


def test_check_fails_on_a_stale_table_and_passes_once_generated(copies: tuple[Path, Path]) -> None:
    rules, docs = copies
    text = docs.read_text(encoding="utf-8")
    docs.write_text(text.replace("| `TargetDown` | critical |", "| `TargetDown` | warning |"))
    stale = _run(rules, docs, "--check")
    assert stale.returncode == 1
    assert "alerting.md is stale" in stale.stderr
    assert "make alert-table" in stale.stderr
    assert "| `TargetDown` | warning |" in docs.read_text(encoding="utf-8"), "--check wrote"

    written = _run(rules, docs)
    assert written.returncode == 0, written.stderr
    assert docs.read_text(encoding="utf-8") == text
    assert _run(rules, docs, "--check").returncode == 0


def test_a_changed_rule_makes_the_table_stale(copies: tuple[Path, Path]) -> None:
    rules, docs = copies
    rules.write_text(rules.read_text(encoding="utf-8").replace("up == 0", "up < 1"))
    assert _run(rules, docs, "--check").returncode == 1
    assert _run(rules, docs).returncode == 0
    assert "\n| `TargetDown` | critical | `up < 1` | 5m |" in "\n".join(_table(docs))
    outside = docs.read_text(encoding="utf-8").split(BEGIN)[0]
    assert outside == DOCS.read_text(encoding="utf-8").split(BEGIN)[0], "prose outside changed"


def test_every_alert_is_one_row_with_escaped_pipes(copies: tuple[Path, Path]) -> None:
    rules, docs = copies
    assert _run(rules, docs).returncode == 0
    rows = [line for line in _table(docs) if line.startswith("| `")]
    names = re.findall(r"^\s*- alert: (\w+)", rules.read_text(encoding="utf-8"), re.M)
    assert [row.split("`")[1] for row in rows] == list(dict.fromkeys(names))
    for row in rows:
        # 7 cell borders; an unescaped pipe (DiskAlmostFull's fstype!~"tmpfs|ramfs...") adds one
        assert len(re.findall(r"(?<!\\)\|", row)) == 7, row
    served = next(row for row in rows if row.startswith("| `ServedCertificateExpiring`"))
    assert "| warning / critical |" in served
    assert "warning: `" in served and "<br>critical: `" in served


def test_an_alert_without_runbook_fails(copies: tuple[Path, Path]) -> None:
    rules, docs = copies
    text = rules.read_text(encoding="utf-8")
    rules.write_text(text.replace("          runbook: >-\n", "          see_also: >-\n", 1))
    result = _run(rules, docs, "--check")
    assert result.returncode == 1
    assert "TargetDown has no runbook annotation" in result.stderr


def test_docs_without_markers_fail(copies: tuple[Path, Path]) -> None:
    rules, docs = copies
    docs.write_text("# Alerting\n\nno table here\n")
    result = _run(rules, docs)
    assert result.returncode == 1
    assert "markers" in result.stderr
    assert docs.read_text(encoding="utf-8") == "# Alerting\n\nno table here\n"
