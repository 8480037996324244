"""Backups on the converged appliance: run the timer's service, read what it saved and what it
reported, and damage the repository to see the check and its metric say so."""

from __future__ import annotations

import json
import re

import pytest

METRICS = "/var/lib/prometheus/node-exporter/appliance_backup.prom"
CHECK_METRICS = "/var/lib/prometheus/node-exporter/appliance_backup_check.prom"
RESTIC = "set -a && . /etc/appliance/backup/restic.env && set +a && restic "


def _metrics(host, path: str) -> dict[str, float]:
    text = host.file(path).content_string
    return {name: float(value) for name, value in re.findall(r"^(\w+) (\S+)$", text, re.M)}


@pytest.fixture(scope="module")
def two_backups(host):
    """Two runs of the backup service: the first saves everything, the second only changes."""
    runs = []
    for _ in range(2):
        result = host.run("systemctl start appliance-backup.service")
        assert result.rc == 0, host.run("journalctl -u appliance-backup.service -o cat").stdout
        latest = host.run(RESTIC + "snapshots latest --json --tag appliance").stdout
        runs.append({**_metrics(host, METRICS), "id": json.loads(latest)[0]["id"]})
    return runs


def test_the_timers_are_armed_and_the_unit_sandboxed(host):
    for timer in ("appliance-backup.timer", "appliance-backup-check.timer"):
        assert host.service(timer).is_enabled and host.service(timer).is_running, timer
    score = host.run("systemd-analyze security appliance-backup.service | tail -n 1")
    level = float(re.search(r"level for \S+: (\d+\.\d+)", score.stdout).group(1))
    assert level < 3.0, score.stdout


def test_a_backup_saves_every_part_of_the_appliance(host, two_backups):
    first, second = two_backups
    assert first["appliance_backup_last_run_success"] == 1
    assert second["id"] != first["id"]  # a new snapshot; forget --prune keeps one a day
    assert (
        second["appliance_backup_last_success_timestamp_seconds"]
        >= first["appliance_backup_last_run_timestamp_seconds"]
    )
    assert second["appliance_backup_added_bytes"] < first["appliance_backup_added_bytes"]
    listing = host.run(RESTIC + "ls latest").stdout
    for wanted in (
        "/etc/appliance/pki/ca.key",
        "/etc/appliance/secrets/restic-password",
        "/var/lib/appliance/ml-api/users/users.json",
        "/manifest.sig",  # a signed model version of the registry
        "/var/log/appliance/ml-api/audit.log",
        "/var/lib/appliance-backup/stage/redis/appendonlydir/appendonly.aof.manifest",
    ):
        assert wanted in listing, wanted


def test_the_status_command_reports_the_last_backup(host, two_backups):
    _, second = two_backups
    out = host.run("/usr/local/sbin/appliance status")
    snapshots = int(second["appliance_backup_snapshots"])
    assert f", {snapshots} snapshot(s)" in out.stdout, out.stdout
    assert "backup: last success 0." in out.stdout, out.stdout  # minutes ago: "0.x h ago"


def test_a_damaged_pack_fails_the_check_and_its_metric(host, two_backups):
    assert host.run("systemctl start appliance-backup-check.service").rc == 0
    assert _metrics(host, CHECK_METRICS)["appliance_backup_check_success"] == 1
    pack = host.run("find /var/backups/appliance-restic/data -type f | head -n 1").stdout.strip()
    assert host.run(f"cp -p {pack} /root/pack.orig").rc == 0
    try:
        host.run(f"printf damaged | dd of={pack} bs=1 seek=64 conv=notrunc")
        # All of the data, not the timer's share, so that the damaged pack is surely read.
        check = host.run("APPLIANCE_BACKUP_CHECK_SUBSET=100% appliance-backup check")
        assert check.rc != 0
        assert _metrics(host, CHECK_METRICS)["appliance_backup_check_success"] == 0
        # The operator's status names it too, and fails.
        status = host.run("/usr/local/sbin/appliance status")
        assert status.rc == 1 and "backup check: the last repository check failed" in status.stdout
    finally:
        host.run(f"cp -p /root/pack.orig {pack}")
    assert host.run("APPLIANCE_BACKUP_CHECK_SUBSET=100% appliance-backup check").rc == 0
    assert _metrics(host, CHECK_METRICS)["appliance_backup_check_success"] == 1
