"""unattended-upgrades for Debian security updates and the pending-reboot signal."""

import time

import pytest

PROM = "/var/lib/prometheus/node-exporter/appliance_reboot_required.prom"


@pytest.fixture(scope="module")
def dry_run(host):
    # The test machines share /var/cache/apt/archives (and its lock) with each other, so
    # the dry run downloads into a private directory instead.
    host.check_output(
        "sudo install -d -o _apt -m 0755 /var/tmp/uu-archives /var/tmp/uu-archives/partial"
    )
    host.check_output("echo 'Dir::Cache::Archives \"/var/tmp/uu-archives/\";' > /tmp/uu-apt.conf")
    try:
        result = host.run("sudo APT_CONFIG=/tmp/uu-apt.conf unattended-upgrade --dry-run --debug")
    finally:
        host.run("sudo rm -rf /var/tmp/uu-archives /tmp/uu-apt.conf")
    assert result.rc == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return (result.stdout + result.stderr).splitlines()


def test_allowed_origins_are_debian_security_only(dry_run):
    line = next(line for line in dry_run if line.startswith("Allowed origins are:"))
    origins = sorted(o.strip() for o in line.split(":", 1)[1].split(", ") if o.strip())
    assert origins == [
        "origin=Debian,codename=trixie,label=Debian-Security",
        "origin=Debian,codename=trixie-security,label=Debian-Security",
    ], line


def test_point_release_and_updates_archives_are_pinned_out(dry_run):
    not_allowed = [line for line in dry_run if line.startswith("Marking not allowed")]
    assert any("a=stable," in line and "l=Debian " in line for line in not_allowed), not_allowed
    assert not any("l=Debian-Security" in line for line in not_allowed), not_allowed


def test_every_candidate_comes_from_the_security_archive(dry_run):
    checked = [line for line in dry_run if line.startswith("Checking: ")]
    assert all("label:'Debian-Security'" in line for line in checked), checked


def test_apt_periodic_settings(host):
    config = host.check_output("apt-config dump APT::Periodic")
    assert 'APT::Periodic::Update-Package-Lists "1";' in config
    assert 'APT::Periodic::Unattended-Upgrade "1";' in config


def test_reboot_is_off_by_default_with_a_window(host):
    config = host.check_output("apt-config dump Unattended-Upgrade")
    assert 'Unattended-Upgrade::Automatic-Reboot "false";' in config
    assert 'Unattended-Upgrade::Automatic-Reboot-Time "04:30";' in config


@pytest.mark.parametrize("timer", ["apt-daily.timer", "apt-daily-upgrade.timer"])
def test_apt_timers_enabled(host, timer):
    assert host.service(timer).is_enabled
    assert host.service(timer).is_running


def test_upgrade_timer_runs_before_the_reboot_window(host):
    calendar = host.check_output(
        "systemctl show apt-daily-upgrade.timer --property=TimersCalendar --value"
    )
    assert "03:00" in calendar


def _metric(host) -> str:
    return host.file(PROM).content_string


def _refresh(host):
    host.check_output("sudo systemctl start appliance-reboot-required.service")


def test_reboot_signal_follows_reboot_required(host):
    assert host.service("appliance-reboot-required.timer").is_enabled
    assert host.service("appliance-reboot-required.path").is_enabled
    host.run("sudo rm -f /run/reboot-required /run/reboot-required.pkgs")
    _refresh(host)
    assert "appliance_reboot_required 0" in _metric(host)
    assert "restart required" not in host.check_output("sudo run-parts /etc/update-motd.d")
    try:
        host.check_output("echo libc6 | sudo tee /run/reboot-required.pkgs >/dev/null")
        host.check_output("sudo touch /run/reboot-required")
        # The path unit notices the new file on its own.
        for _ in range(50):
            if "appliance_reboot_required 1" in _metric(host):
                break
            time.sleep(0.1)
        assert "appliance_reboot_required 1" in _metric(host)
        motd = host.check_output("sudo run-parts /etc/update-motd.d")
        assert "System restart required" in motd and "libc6" in motd
    finally:
        host.run("sudo rm -f /run/reboot-required /run/reboot-required.pkgs")
        _refresh(host)
    assert "appliance_reboot_required 0" in _metric(host)
