"""Sysctls, login.defs, core dumps, journald, AppArmor and packages after the hardening role."""

import pytest
from conftest import CONTAINER_SKIPS, flat

NETWORK_SYSCTLS = {
    "net.ipv4.conf.all.accept_redirects": "0",
    "net.ipv4.conf.all.send_redirects": "0",
    "net.ipv4.conf.all.accept_source_route": "0",
    "net.ipv4.conf.all.rp_filter": "1",
    "net.ipv4.conf.all.log_martians": "1",
    "net.ipv4.tcp_syncookies": "1",
    "net.ipv4.icmp_echo_ignore_broadcasts": "1",
    "net.ipv6.conf.all.accept_redirects": "0",
    "net.ipv4.ip_forward": "0",
}


@pytest.mark.parametrize(("key", "value"), NETWORK_SYSCTLS.items())
def test_network_sysctl_is_live_and_persisted(host, key, value):
    assert host.check_output(f"sysctl -n {key}") == value
    persisted = host.file("/etc/sysctl.d/90-appliance-network.conf").content_string.splitlines()
    assert f"{key}={value}" in [line.replace(" ", "") for line in persisted]


def test_kernel_sysctls_are_not_written_inside_the_container(host):
    assert host.check_output("systemd-detect-virt --container") == "systemd-nspawn"
    assert not host.file("/etc/sysctl.d/91-appliance-kernel.conf").exists


def test_user_namespaces_stay_available(host):
    assert int(host.check_output("sysctl -n user.max_user_namespaces")) > 0
    assert host.run("unshare --user --map-root-user true").rc == 0


def test_converge_says_which_kernel_sysctls_it_skipped_and_changes_nothing(playbook_runs):
    returncode, stdout = playbook_runs[CONTAINER_SKIPS]
    assert returncode == 0, stdout[-3000:]
    output = flat(stdout)
    assert "Skipped kernel-wide sysctls" in output
    assert "kernel.kptr_restrict" in output and "fs.protected_regular" in output
    assert "virtualization_type=container" in output
    assert "Skipped kernel-wide sysctl fs.suid_dumpable" in output
    assert "Skipped AppArmor: this host is a container" in output
    recap = flat(stdout.rsplit("PLAY RECAP", 1)[1])
    assert "changed=0" in recap and "failed=0" in recap, recap


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("UMASK", "027"),
        ("PASS_MAX_DAYS", "365"),
        ("PASS_MIN_DAYS", "1"),
        ("ENCRYPT_METHOD", "YESCRYPT"),
    ],
)
def test_login_defs(host, key, value):
    lines = [
        line.split()
        for line in host.file("/etc/login.defs").content_string.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert [key, value] in lines
    assert sum(1 for fields in lines if fields[0] == key) == 1


def test_new_login_sessions_get_umask_027(host):
    assert host.check_output("sudo -u opsadmin -i sh -c umask") == "0027"


def test_core_dumps_are_off(host):
    assert host.check_output("sudo -u opsadmin -i sh -c 'ulimit -Hc'") == "0"
    assert host.check_output("systemctl show --property=DefaultLimitCORE --value") == "0"
    coredump = host.check_output("systemd-analyze cat-config systemd/coredump.conf")
    assert "Storage=none" in coredump


def test_journal_is_persistent_with_a_cap(host):
    config = host.check_output("systemd-analyze cat-config systemd/journald.conf")
    assert "Storage=persistent" in config
    assert "SystemMaxUse=500M" in config
    machine_id = host.file("/etc/machine-id").content_string.strip()
    assert host.file(f"/var/log/journal/{machine_id}").is_directory
    assert "/var/log/journal" in host.check_output(
        "sudo journalctl --header --no-pager | head -n 3"
    )


@pytest.mark.parametrize(
    "package", ["telnet", "inetutils-telnet", "rsh-client", "talk", "nis", "xinetd"]
)
def test_unneeded_package_absent(host, package):
    assert not host.package(package).is_installed


def test_admin_keeps_password_aging_off(host):
    assert host.check_output("sudo chage -l opsadmin | grep 'Maximum number'").endswith("-1")


def test_unneeded_kernel_modules_cannot_load(host):
    config = host.file("/etc/modprobe.d/appliance-disabled-modules.conf").content_string
    for module in ("dccp", "sctp", "usb-storage", "firewire-core"):
        assert f"install {module} /bin/false" in config


def test_login_banner(host):
    for path in ("/etc/issue", "/etc/issue.net"):
        assert "Authorised access only" in host.file(path).content_string
