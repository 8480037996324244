"""The traefik role's renewal timer script (roles/traefik/files/appliance-cert-renew), run as it is
against an appliance-like CA that openssl makes in a temporary directory: a certificate close to
expiry is re-issued (new serial, verifies against the CA, same names), a long-lived one is left
alone, and a broken CA key leaves the old certificate and reports the failure. The converge
(pki.yml) keeps a certificate the timer renewed."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509
from local_playbook import run_local_playbook

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "roles/traefik/files/appliance-cert-renew"
NAMES = ["api.localhost", "dev.localhost", "metrics.localhost"]
DAY = 86400


def _openssl(*args: str, cwd: Path) -> str:
    return subprocess.run(
        ["openssl", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """What roles/traefik/tasks/pki.yml leaves: a P-384 CA, a P-256 server key, both 0600."""
    d = tmp_path / "pki"
    d.mkdir(mode=0o700)
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:secp384r1", "-nodes",
        "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-subj", "/CN=Appliance CA (test)",
        "-addext", "basicConstraints=critical,CA:TRUE,pathlen:0",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=d,
    )  # fmt: skip
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "server.key",
        cwd=d,
    )  # fmt: skip
    for key in ("ca.key", "server.key"):
        (d / key).chmod(0o600)
    (tmp_path / "dynamic").mkdir()
    (tmp_path / "textfile").mkdir()
    return d


def _issue(pki: Path, days: int) -> None:
    """A server certificate as the converge issues it, valid for `days`."""
    ext = pki.parent / "server.ext"
    ext.write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage=serverAuth\nsubjectAltName={','.join('DNS:' + n for n in NAMES)}\n"
    )
    _openssl("req", "-new", "-key", "server.key", "-subj", "/CN=api.localhost", "-out", "s.csr",
             cwd=pki)  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "s.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-set_serial", "4242",
        "-days", str(days), "-extfile", str(ext), "-out", "server.crt",
        cwd=pki,
    )  # fmt: skip
    (pki / "s.csr").unlink()


def _config(pki: Path, renew_days: int = 30) -> Path:
    config = {
        "ca_cert": str(pki / "ca.crt"),
        "ca_key": str(pki / "ca.key"),
        "cert": str(pki / "server.crt"),
        "key": str(pki / "server.key"),
        "published_cert": str(pki.parent / "dynamic" / "server.crt"),
        "common_name": "api.localhost",
        "dns_names": NAMES,
        "valid_days": 397,
        "renew_days": renew_days,
        "metrics_file": str(pki.parent / "textfile" / "appliance_cert_renew.prom"),
    }
    path = pki.parent / "cert-renew.json"
    path.write_text(json.dumps(config))
    return path


def _run(config: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _metrics(pki: Path) -> dict[str, float]:
    text = (pki.parent / "textfile" / "appliance_cert_renew.prom").read_text()
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


SERVER = 'appliance_certificate_not_after_timestamp_seconds{certificate="server"}'
CA = 'appliance_certificate_not_after_timestamp_seconds{certificate="ca"}'


def test_a_certificate_close_to_expiry_is_reissued(pki: Path) -> None:
    _issue(pki, days=20)
    key_before = (pki / "server.key").read_bytes()
    started = time.time()
    result = _run(_config(pki, renew_days=30))
    assert result.returncode == 0, result.stderr
    assert "renewed" in result.stderr

    new = _cert(pki / "server.crt")
    assert new.serial_number != 4242
    assert _openssl("verify", "-CAfile", "ca.crt", "-purpose", "sslserver", "server.crt", cwd=pki)
    san = new.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == NAMES
    assert new.subject.rfc4514_string() == "CN=api.localhost"
    # the same key, still root-only, and a certificate good for the configured 397 days
    assert (pki / "server.key").read_bytes() == key_before
    assert stat.S_IMODE((pki / "server.key").stat().st_mode) == 0o600
    assert abs(new.not_valid_after_utc.timestamp() - (started + 397 * DAY)) < 120
    # Traefik's watched copy is the new certificate; no temporary file is left in either place
    assert (pki.parent / "dynamic" / "server.crt").read_bytes() == (pki / "server.crt").read_bytes()
    assert sorted(p.name for p in (pki.parent / "dynamic").iterdir()) == ["server.crt"]
    assert not [p.name for p in pki.iterdir() if p.name.startswith(".server.crt")]

    metrics = _metrics(pki)
    assert metrics["appliance_cert_renew_last_run_success"] == 1
    assert metrics[SERVER] == pytest.approx(new.not_valid_after_utc.timestamp())
    assert metrics[CA] == pytest.approx(_cert(pki / "ca.crt").not_valid_after_utc.timestamp())
    assert metrics["appliance_cert_renew_last_run_timestamp_seconds"] >= int(started)


def test_a_long_lived_certificate_is_left_alone(pki: Path) -> None:
    _issue(pki, days=397)
    published = pki.parent / "dynamic" / "server.crt"
    published.write_bytes((pki / "server.crt").read_bytes())
    before = {p: (p.read_bytes(), p.stat().st_ino) for p in (pki / "server.crt", published)}
    result = _run(_config(pki, renew_days=30))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert {p: (p.read_bytes(), p.stat().st_ino) for p in before} == before
    assert _cert(pki / "server.crt").serial_number == 4242
    assert _metrics(pki)["appliance_cert_renew_last_run_success"] == 1


def test_a_broken_ca_key_keeps_the_old_certificate_and_reports_it(pki: Path) -> None:
    _issue(pki, days=20)
    old = (pki / "server.crt").read_bytes()
    (pki / "ca.key").write_text("-----BEGIN PRIVATE KEY-----\nbroken\n-----END PRIVATE KEY-----\n")
    result = _run(_config(pki, renew_days=30))
    assert result.returncode == 1
    assert "renewal failed, the certificate was left as it was" in result.stderr
    assert (pki / "server.crt").read_bytes() == old
    assert not (pki.parent / "dynamic" / "server.crt").exists()
    metrics = _metrics(pki)
    assert metrics["appliance_cert_renew_last_run_success"] == 0
    # the old certificate's expiry is still reported, so the expiry alerts keep counting down
    assert metrics[SERVER] == pytest.approx(
        _cert(pki / "server.crt").not_valid_after_utc.timestamp()
    )
    assert CA in metrics


def test_a_key_readable_by_others_is_not_signed_for(pki: Path) -> None:
    _issue(pki, days=20)
    old = (pki / "server.crt").read_bytes()
    (pki / "server.key").chmod(0o644)
    result = _run(_config(pki, renew_days=30))
    assert result.returncode == 1
    assert "readable by others" in result.stderr
    assert (pki / "server.crt").read_bytes() == old


def test_check_config_refuses_what_the_role_must_not_write(pki: Path) -> None:
    config = _config(pki)
    check = [sys.executable, str(SCRIPT), "--check-config", str(config)]
    assert subprocess.run(check, capture_output=True, check=False).returncode == 0
    good = json.loads(config.read_text())
    for bad in (
        {**good, "renew_days": 400},
        {**good, "renew_days": True},
        {**good, "dns_names": []},
        {**good, "cert": "server.crt"},
        {**good, "typo": 1},
    ):
        config.write_text(json.dumps(bad))
        result = subprocess.run(check, capture_output=True, text=True, check=False)
        assert result.returncode == 1, bad
        assert result.stderr


PKI_PLAYBOOK = """
- name: The traefik role's PKI tasks on temporary paths
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - {role}/defaults/main.yml
    - {role}/vars/main.yml
  tasks:
    - name: Issue the CA and the server certificate
      ansible.builtin.include_tasks: {role}/tasks/pki.yml
    - name: Write the renewal settings
      ansible.builtin.copy:
        content: "{{{{ __traefik_cert_renew | to_json }}}}"
        dest: {out}/cert-renew.json
        mode: "0644"
"""


def test_the_converge_keeps_a_certificate_the_timer_renewed(tmp_path: Path) -> None:
    """pki.yml (community.crypto) must take the timer's certificate as its own: otherwise every
    converge after a renewal would re-issue it."""
    playbook = tmp_path / "pki.yml"
    playbook.write_text(PKI_PLAYBOOK.format(role=REPO / "roles/traefik", out=tmp_path))
    (tmp_path / "textfile").mkdir()
    # extra vars: the only ones above the role files the play loads as vars_files
    paths = {
        "traefik_pki_dir": str(tmp_path / "pki"),
        "traefik_ca_public_path": str(tmp_path / "ca.crt"),
        "traefik_config_dir": str(tmp_path / "traefik"),
        "traefik_textfile_dir": str(tmp_path / "textfile"),
        "inventory_hostname": "test",
    }
    first = run_local_playbook(playbook, paths)
    assert first.returncode == 0, first.stdout[-3000:]
    before = _cert(tmp_path / "pki/server.crt")

    # Forced: a threshold above the 397 days left (the lifetime is raised to keep it valid).
    config = json.loads((tmp_path / "cert-renew.json").read_text())
    assert config["cert"] == paths["traefik_pki_dir"] + "/server.crt"
    config.update(valid_days=399, renew_days=398)
    (tmp_path / "forced.json").write_text(json.dumps(config))
    result = _run(tmp_path / "forced.json")
    assert result.returncode == 0, result.stderr
    renewed = _cert(tmp_path / "pki/server.crt")
    assert renewed.serial_number != before.serial_number
    published = tmp_path / "traefik/dynamic/server.crt"
    assert published.read_bytes() == (tmp_path / "pki/server.crt").read_bytes()

    again = run_local_playbook(playbook, paths)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "changed=0" in again.stdout, again.stdout[-3000:]
    assert _cert(tmp_path / "pki/server.crt").serial_number == renewed.serial_number
