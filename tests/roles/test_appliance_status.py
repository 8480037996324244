"""`appliance status` (roles/podman/files/appliance): its settings, the fragments other roles add,
and the backup report read from the backup script's textfile metrics."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import time
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "roles/podman/files/appliance"
BASE = {
    "service_user": "appliance",
    "system_units": [],
    "system_unit_patterns": [],
    "certificates": [],
    "certificate_min_days": 14,
    "disk_paths": ["/"],
    "disk_max_percent": 90,
    "model_container": "",
}


@pytest.fixture(scope="module")
def status() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("appliance_status", str(SCRIPT))
    spec = importlib.util.spec_from_loader("appliance_status", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _write(path: Path, data: object) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_fragments_add_settings_and_typos_are_refused(status: ModuleType, tmp_path: Path) -> None:
    main = _write(tmp_path / "status.json", BASE)
    fragments = tmp_path / "status.d"
    fragments.mkdir()
    _write(fragments / "backup.json", {"backup_metrics": "/x.prom", "backup_max_age_hours": 26})
    config = status.load_config(main, fragments)
    assert config["backup_metrics"] == "/x.prom" and config["service_user"] == "appliance"
    _write(fragments / "typo.json", {"backup_metric": "/x.prom"})
    with pytest.raises(ValueError, match="unknown setting"):
        status.load_config(main, fragments)
    # A fragment may not override what the podman role owns.
    _write(fragments / "typo.json", {"service_user": "root"})
    with pytest.raises(ValueError, match="unknown setting"):
        status.load_config(main, fragments)
    _write(fragments / "typo.json", {"backup_max_age_hours": "26"})
    with pytest.raises(ValueError, match="must be a int"):
        status.load_config(main, fragments)
    with pytest.raises(ValueError, match="'disk_paths' must be a list"):
        status.load_config(_write(tmp_path / "bad.json", {**BASE, "disk_paths": "/"}))


def _metrics(path: Path, **values: float) -> str:
    path.write_text("".join(f"# HELP {k} x\n{k} {v}\n" for k, v in values.items()))
    return str(path)


def test_backup_report(status: ModuleType, tmp_path: Path, capsys) -> None:
    run = tmp_path / "appliance_backup.prom"
    check = tmp_path / "appliance_backup_check.prom"
    config = {"backup_metrics": str(run), "backup_check_metrics": str(check)}
    assert status.backup_report({}) == []
    assert "not configured" in capsys.readouterr().out
    assert status.backup_report(config) == []  # fresh install: the first run is still to come
    assert "none has run yet" in capsys.readouterr().out

    now = time.time()
    ok = {"appliance_backup_last_run_success": 1, "appliance_backup_snapshots": 3}
    _metrics(run, **ok, appliance_backup_last_success_timestamp_seconds=now - 3600)
    _metrics(
        check,
        appliance_backup_check_success=1,
        appliance_backup_check_last_run_timestamp_seconds=now,
    )
    assert status.backup_report(config) == []
    out = capsys.readouterr().out
    assert "backup: last success 1.0 h ago, 3 snapshot(s)" in out and "backup check: ok" in out

    _metrics(run, **ok, appliance_backup_last_success_timestamp_seconds=now - 27 * 3600)
    assert status.backup_report(config) == ["backup: no success for more than 26 h"]
    capsys.readouterr()

    _metrics(
        run,
        appliance_backup_last_run_success=0,
        appliance_backup_snapshots=3,
        appliance_backup_last_success_timestamp_seconds=now - 600,
    )
    _metrics(
        check,
        appliance_backup_check_success=0,
        appliance_backup_check_last_run_timestamp_seconds=now,
    )
    problems = status.backup_report(config)
    assert problems == [
        "backup: the last run failed",
        "backup check: the last repository check failed",
    ]
    assert "LAST RUN FAILED" in capsys.readouterr().out
