"""unattended-upgrades for Debian security updates and the pending-reboot signal."""

import shlex
import time

import pytest

PROM = "/var/lib/prometheus/node-exporter/appliance_reboot_required.prom"


# Builds two probe packages (1.0 installed, 2.0 offered) and two local flat repositories that
# say what Debian's do in their Release files: one the security archive (label Debian-Security,
# codename <release>-security), one the point-release archive (label Debian). Without them the
# dry run may have no candidate at all, and a check over its candidates would pass on nothing.
PROBE_REPO = r"""
import hashlib, os, subprocess, sys, time
from pathlib import Path

root, codename = Path(sys.argv[1]), sys.argv[2]
os.umask(0o022)  # the hardened host's is 027; dpkg-deb and apt's _apt need 0755


def build(name, version):
    pkg = root / "build" / f"{name}_{version}"
    (pkg / "DEBIAN").mkdir(parents=True)
    (pkg / "DEBIAN" / "control").write_text(
        f"Package: {name}\nVersion: {version}\nArchitecture: all\n"
        "Maintainer: appliance tests <tests@example.invalid>\n"
        "Description: probe package of the unattended-upgrades test\n")
    deb = root / "build" / f"{name}_{version}_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-b", str(pkg), str(deb)], check=True,
                   stdout=subprocess.DEVNULL)
    return deb


def repo(directory, deb, label, suite, codename):
    d = root / directory
    d.mkdir(parents=True)
    data = deb.read_bytes()
    (d / deb.name).write_bytes(data)
    control = subprocess.run(["dpkg-deb", "-f", str(deb)], check=True, capture_output=True,
                             text=True).stdout.rstrip("\n")
    packages = (f"{control}\nFilename: ./{deb.name}\nSize: {len(data)}\n"
                f"SHA256: {hashlib.sha256(data).hexdigest()}\n\n").encode()
    (d / "Packages").write_bytes(packages)
    date = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime())
    (d / "Release").write_text(
        f"Origin: Debian\nLabel: {label}\nSuite: {suite}\nCodename: {codename}\n"
        f"Date: {date}\nArchitectures: all\nSHA256:\n"
        f" {hashlib.sha256(packages).hexdigest()} {len(packages)} Packages\n")


old = []
for name in ("appliance-probe-security", "appliance-probe-stable"):
    old.append(str(build(name, "1.0")))
    build(name, "2.0")
repo("security", root / "build/appliance-probe-security_2.0_all.deb", "Debian-Security",
     "stable-security", f"{codename}-security")
repo("stable", root / "build/appliance-probe-stable_2.0_all.deb", "Debian", "stable", codename)
print(" ".join(old))
"""
PROBE_DIR = "/var/tmp/appliance-probe-repo"
PROBE_LIST = "/etc/apt/sources.list.d/appliance-probe.list"
PROBE_CLEANUP = (
    "sudo dpkg --purge appliance-probe-security appliance-probe-stable; "
    f"sudo rm -rf {PROBE_LIST} /var/lib/apt/lists/_var_tmp_appliance-probe-repo_* {PROBE_DIR}"
)


@pytest.fixture(scope="module")
def dry_run(host):
    codename = host.check_output(". /etc/os-release && echo $VERSION_CODENAME")
    host.run(PROBE_CLEANUP)
    installed = host.check_output(
        f"sudo python3 -c {shlex.quote(PROBE_REPO)} {PROBE_DIR} {codename}"
    )
    # The test machines share /var/cache/apt/archives (and its lock) with each other, so
    # the dry run downloads into a private directory instead.
    host.check_output(
        "sudo install -d -o _apt -m 0755 /var/tmp/uu-archives /var/tmp/uu-archives/partial"
    )
    host.check_output("echo 'Dir::Cache::Archives \"/var/tmp/uu-archives/\";' > /tmp/uu-apt.conf")
    try:
        host.check_output(f"sudo dpkg -i {installed}")
        host.check_output(
            f"printf 'deb [trusted=yes] file:%s ./\\n' {PROBE_DIR}/security {PROBE_DIR}/stable"
            f" | sudo tee {PROBE_LIST}"
        )
        # Only the probe lists: the machine's own lists stay as they are.
        host.check_output(
            f"sudo apt-get update -o Dir::Etc::sourcelist={PROBE_LIST} "
            "-o Dir::Etc::sourceparts=- -o APT::Get::List-Cleanup=0"
        )
        result = host.run("sudo APT_CONFIG=/tmp/uu-apt.conf unattended-upgrade --dry-run --debug")
    finally:
        host.run("sudo rm -rf /var/tmp/uu-archives /tmp/uu-apt.conf")
        host.run(PROBE_CLEANUP)
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


def test_only_security_updates_are_installed(dry_run):
    # "Checking:" lists every upgradable candidate, allowed or not; what the run would install
    # is the "Packages that will be upgraded" line.
    line = next(line for line in dry_run if line.startswith("Packages that will be upgraded:"))
    upgraded = line.split(":", 1)[1].split()
    assert "appliance-probe-security" in upgraded, line
    assert "appliance-probe-stable" not in upgraded, line
    origins = {
        line.split()[1].split("=")[0]: line for line in dry_run if line.startswith("Checking: ")
    }
    for package in upgraded:  # each from the security archive
        assert "label:'Debian-Security'" in origins[package], origins.get(package, package)


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
