"""The appliance scenario also runs the services, ml_service and alerting tests (molecule.yml);
here: those it replaces by checks of the full appliance (three need the API absent, one would
wait for a second stopped target), the delays measured, and where the browser test's
screenshots go."""

from __future__ import annotations

from pathlib import Path

import pytest
from alert_notifications import report_timings

REPO = Path(__file__).resolve().parents[3]
# Ignored by git (.gitignore); printed at the end of the run.
ARTIFACTS = REPO / "artifacts" / "appliance"

# (scenario, file, test) -> why it does not run here, and the test of this directory that checks
# it on the full appliance.
REPLACED = {
    ("services", "test_traefik.py", "test_api_answers_503_until_it_is_deployed"): (
        "needs the API absent; checked by "
        "test_appliance.py::test_api_answers_503_while_it_is_stopped"
    ),
    ("services", "test_traefik.py", "test_access_log_lines_are_json"): (
        "needs the API absent; checked by "
        "test_appliance.py::test_access_log_records_the_api_status (the API's 404)"
    ),
    ("services", "test_prometheus.py", "test_all_targets_up"): (
        "needs the API absent; checked by "
        "test_appliance.py::test_prometheus_scrapes_every_target (with the ml-api job)"
    ),
    ("alerting", "test_notifications.py", "test_stopped_target_fires_and_its_start_resolves"): (
        "one stopped target is enough (each costs TargetDown's 5 minutes); checked by "
        "test_alerts_reach_a_person.py::test_stopped_api_fires_at_the_webhook_and_its_start_resolves"
    ),
}


_deselected: list[tuple[str, str, str]] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        key = (item.path.parents[1].name, item.path.name, getattr(item, "originalname", item.name))
        (dropped if key in REPLACED else kept).append(item)
        if key in REPLACED:
            _deselected.append(key)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def pytest_terminal_summary(terminalreporter) -> None:
    report_timings(terminalreporter)
    for key in sorted(set(_deselected)):
        scenario, file, test = key
        terminalreporter.write_line(f"deselected {scenario}/tests/{file}::{test}: {REPLACED[key]}")
    if ARTIFACTS.is_dir():
        terminalreporter.write_line(f"appliance test artifacts (screenshots): {ARTIFACTS}")


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS
