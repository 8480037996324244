"""The alert table of docs/alerting.md from the alert rules, the single source of its rows.

    python scripts/alert_table.py            # rewrite the table in docs/alerting.md
    python scripts/alert_table.py --check    # fail: table stale, or a rule lacks what it needs

One row per alert name, in the order of files/prometheus/alerts.yml: an alert with a warning
and a critical rule (the same name, so the critical one mutes the warning) is one row naming
both severities and both expressions. The table sits between the marker comments below;
everything else in the file is left as it is. Every alerting rule needs a `severity` label and
the annotations `summary`, `description` (why it matters) and `runbook` (what to do first).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
RULES = REPO / "files" / "prometheus" / "alerts.yml"
DOCS = REPO / "docs" / "alerting.md"

BEGIN = "<!-- alert-table:begin: generated from files/prometheus/alerts.yml, make alert-table -->"
END = "<!-- alert-table:end -->"
ANNOTATIONS = ("summary", "description", "runbook")


@dataclass
class Alert:
    name: str
    description: str
    runbook: str
    # (severity, expression, for) of each rule of that name, in file order
    rules: list[tuple[str, str, str]] = field(default_factory=list)


def _text(value: Any) -> str:
    return " ".join(str(value).split())


def _cell(value: str) -> str:
    return _text(value).replace("|", "\\|")


def _code(value: str) -> str:
    return f"`{_cell(value)}`"


def _shown(path: Path) -> str:
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def load(path: Path) -> tuple[list[Alert], list[str]]:
    """The alerts of a rule file, merged by name, and what is missing from its rules."""
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    alerts: dict[str, Alert] = {}
    problems = []
    for group in data.get("groups") or []:
        for rule in group.get("rules") or []:
            if "alert" not in rule:
                continue
            name = rule["alert"]
            annotations = rule.get("annotations") or {}
            severity = (rule.get("labels") or {}).get("severity")
            for key in ANNOTATIONS:
                if not _text(annotations.get(key, "")):
                    problems.append(f"{_shown(path)}: {name} has no {key} annotation")
            if not severity:
                problems.append(f"{_shown(path)}: {name} has no severity label")
            description = _text(annotations.get("description", ""))
            runbook = _text(annotations.get("runbook", ""))
            alert = alerts.setdefault(name, Alert(name, description, runbook))
            if (alert.description, alert.runbook) != (description, runbook):
                problems.append(
                    f"{_shown(path)}: the rules of {name} differ in description or runbook"
                )
            alert.rules.append((str(severity or ""), _text(rule["expr"]), str(rule.get("for", ""))))
    return list(alerts.values()), problems


def render(alerts: list[Alert]) -> str:
    out = [
        BEGIN,
        "",
        "| alert | severity | expression | for | why it matters | what to do |",
        "|---|---|---|---|---|---|",
    ]
    for alert in alerts:
        severities = " / ".join(severity for severity, _, _ in alert.rules)
        if len(alert.rules) == 1:
            expression = _code(alert.rules[0][1])
        else:
            expression = "<br>".join(f"{sev}: {_code(expr)}" for sev, expr, _ in alert.rules)
        durations = dict.fromkeys(duration for _, _, duration in alert.rules)
        row = [
            f"`{alert.name}`",
            severities,
            expression,
            " / ".join(durations),
            _cell(alert.description),
            _cell(alert.runbook),
        ]
        out.append("| " + " | ".join(row) + " |")
    out += ["", END]
    return "\n".join(out)


def updated(docs: str, table: str) -> str:
    """docs with the text between the markers replaced by table (markers included)."""
    begin, end = docs.find(BEGIN), docs.find(END)
    if begin < 0 or end < begin:
        raise ValueError(f"no {BEGIN!r} ... {END!r} markers, in that order")
    return docs[:begin] + table + docs[end + len(END) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check only, change nothing")
    parser.add_argument("--rules", type=Path, default=RULES, help="the alert rule file")
    parser.add_argument("--docs", type=Path, default=DOCS, help="the Markdown file with the table")
    args = parser.parse_args(argv)
    alerts, problems = load(args.rules)
    current = args.docs.read_text(encoding="utf-8")
    try:
        text = updated(current, render(alerts))
    except ValueError as error:
        print(f"{_shown(args.docs)}: {error}", file=sys.stderr)
        return 1
    if args.check:
        if text != current:
            docs, rules = _shown(args.docs), _shown(args.rules)
            problems.append(
                f"{docs} is stale: its alert table is not {rules}'s; run make alert-table"
            )
    elif text != current:
        args.docs.write_text(text, encoding="utf-8")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
