"""Traefik on the services test machine, probed from the controller over the veth link.

Every request goes to the machine's address with curl's --resolve, so the real path is
exercised: rootless port forwarding, TLS with the appliance CA, routing. (This scenario has
no host firewall: ports that must not be reachable are checked to be refused, i.e. nothing
listens there, not merely filtered.)
"""

from __future__ import annotations

import json
import shlex
import socket
import ssl
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

SERVICE_USER = "appliance"
# Traefik's own host account (podman_service_ids), the only writer of its logs.
TRAEFIK_ACCOUNT = f"{SERVICE_USER}-traefik"
HOSTS = ("api.localhost", "dev.localhost", "metrics.localhost")
CA_PUBLIC = "/etc/appliance/ca.crt"
RENEW_CONFIG = "/etc/appliance/cert-renew.json"
TRAEFIK_PID = "systemctl --user show --property=MainPID --value traefik.service"
ACCESS_LOG = "/var/log/appliance/traefik/access.log"
METRICS_PASSWORD_FILE = "/etc/appliance/secrets/traefik-metrics-password"


def curl(address: str, ca_file: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    resolve = [arg for name in HOSTS for arg in ("--resolve", f"{name}:443:{address}")]
    return subprocess.run(
        ["curl", "-sS", "--max-time", "15", "--cacert", str(ca_file), *resolve, *args, url],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def status_of(address: str, ca_file: Path, url: str, *args: str) -> int:
    result = curl(address, ca_file, url, "-o", "/dev/null", "-w", "%{http_code}", *args)
    assert result.returncode == 0, f"curl {url}: {result.stderr}"
    return int(result.stdout)


def tls_handshake(address: str, version_flag: str, servername: str | None = "api.localhost"):
    # SECLEVEL=0 lets this OpenSSL client offer TLS 1.0/1.1 at all: a failure is then the
    # server's refusal, not the client's policy (old_tls_server proves it).
    sni = ["-servername", servername] if servername else ["-noservername"]
    target = address if ":" in address else f"{address}:443"
    return subprocess.run(
        ["openssl", "s_client", "-connect", target, *sni, version_flag,
         "-cipher", "DEFAULT:@SECLEVEL=0"],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )  # fmt: skip


def test_traefik_unit_is_active(host):
    uid = host.user(SERVICE_USER).uid
    with host.sudo(SERVICE_USER):
        state = host.run(
            f"XDG_RUNTIME_DIR=/run/user/{uid} systemctl --user is-active traefik.service"
        ).stdout.strip()
    assert state == "active"


def test_ca_is_public_and_keys_are_root_only(host):
    ca = host.file(CA_PUBLIC)
    assert ca.exists and ca.mode == 0o644 and ca.user == "root"
    with host.sudo():
        pki = host.file("/etc/appliance/pki")
        assert pki.is_directory and pki.mode == 0o700 and pki.user == "root"
        for key in ("ca.key", "server.key"):
            f = host.file(f"/etc/appliance/pki/{key}")
            assert f.mode == 0o600 and f.user == "root", key
        text = host.check_output("openssl x509 -in /etc/appliance/pki/ca.crt -noout -text")
    assert "CA:TRUE" in text


@pytest.mark.parametrize("name", HOSTS)
def test_https_certificate_verifies_against_appliance_ca(address, ca_file, name):
    result = curl(
        address, ca_file, f"https://{name}/", "-o", "/dev/null", "-w", "%{ssl_verify_result}"
    )
    assert result.returncode == 0, f"TLS to {name} failed: {result.stderr}"
    assert result.stdout == "0"


def test_certificate_is_not_trusted_without_the_ca(address, tmp_path):
    empty = tmp_path / "other-ca.crt"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-keyout", str(tmp_path / "k"), "-out", str(empty), "-subj", "/CN=other",
         "-days", "1"],
        capture_output=True, check=True, timeout=30,
    )  # fmt: skip
    result = curl(address, empty, "https://api.localhost/", "-o", "/dev/null")
    assert result.returncode == 60, "a foreign CA must not verify the appliance certificate"


def served_certificate(
    address: str, ca_file: Path, name: str = "api.localhost"
) -> x509.Certificate:
    """The certificate Traefik presents for NAME, verified against the appliance CA."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with (
        socket.create_connection((address, 443), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=name) as tls,
    ):
        return x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))


def test_a_renewed_certificate_is_served_without_restarting_traefik(
    host, as_service, address, ca_file
):
    """The renewal timer's command, made to renew now (renew_days above what is left), replaces
    the certificate; Traefik's file provider serves the new one without a restart."""
    before = served_certificate(address, ca_file)
    pid = as_service(TRAEFIK_PID).stdout.strip()
    with host.sudo():
        config = json.loads(host.file(RENEW_CONFIG).content_string)
        # Above what the served certificate has left, whatever earlier runs issued: a fixed
        # offset from valid_days renewed nothing on a second run against the same machine.
        left = (before.not_valid_after_utc - datetime.now(UTC)).days
        config["renew_days"] = left + 1
        config["valid_days"] = max(config["valid_days"], config["renew_days"] + 1)
        forced = host.check_output("mktemp")
        try:
            host.run_test(f"printf %s {shlex.quote(json.dumps(config))} > {forced}")
            renewed = host.run(f"/usr/local/sbin/appliance-cert-renew --config {forced}")
        finally:
            host.run(f"rm -f {forced}")
        assert renewed.rc == 0, renewed.stderr
        published = x509.load_pem_x509_certificate(
            host.file(config["published_cert"]).content_string.encode()
        )
    assert published.serial_number != before.serial_number, "the command renewed nothing"
    deadline = time.monotonic() + 60
    while (served := served_certificate(address, ca_file)).serial_number != published.serial_number:
        assert time.monotonic() < deadline, "Traefik still serves the old certificate after 60 s"
        time.sleep(2)
    assert served.subject == before.subject
    assert served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value == (
        before.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    )
    after = as_service(TRAEFIK_PID).stdout.strip()
    assert after == pid, "Traefik was restarted to pick up the certificate"


@pytest.mark.parametrize("name", HOSTS)
def test_http_redirects_to_https(address, name):
    result = subprocess.run(
        ["curl", "-sS", "--max-time", "15", "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}",
         "-H", f"Host: {name}", f"http://{address}/some/path?q=1"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    code, location = result.stdout.split(" ", 1)
    assert code in ("301", "308")
    assert location == f"https://{name}/some/path?q=1"


@pytest.fixture(scope="module")
def old_tls_server(tmp_path_factory: pytest.TempPathFactory):
    """A local `openssl s_server` that allows TLS 1.0 and 1.1, to prove the probe client can
    really speak them: only then is the appliance's refusal meaningful."""
    d = tmp_path_factory.mktemp("old-tls")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / "k"),
         "-out", str(d / "c"), "-subj", "/CN=old-tls", "-days", "1"],
        capture_output=True, check=True, timeout=60,
    )  # fmt: skip
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        ["openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", str(d / "c"),
         "-key", str(d / "k"), "-cipher", "DEFAULT:@SECLEVEL=0", "-www"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while True:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                break
        assert time.monotonic() < deadline and proc.poll() is None, "s_server did not start"
        time.sleep(0.1)  # polling for the listener, with a deadline
    yield f"127.0.0.1:{port}"
    proc.kill()
    proc.wait()


@pytest.mark.parametrize(("flag", "protocol"), [("-tls1", "TLSv1"), ("-tls1_1", "TLSv1.1")])
def test_old_tls_versions_are_refused(address, old_tls_server, flag, protocol):
    capable = tls_handshake(old_tls_server, flag, servername=None)
    assert capable.returncode == 0, f"the probe client cannot do {flag}: {capable.stderr[-500:]}"
    assert (
        f"Protocol  : {protocol}\n" in capable.stdout or f"{protocol}, Cipher is" in capable.stdout
    )
    result = tls_handshake(address, flag)
    assert result.returncode != 0, f"server accepted {flag}:\n{result.stdout[-500:]}"
    # The server's own answer: a protocol_version alert (not a client-side policy refusal).
    assert "alert protocol version" in result.stderr, result.stderr[-500:]


@pytest.mark.parametrize("flag", ["-tls1_2", "-tls1_3"])
def test_current_tls_versions_are_accepted(address, flag):
    """The same probe succeeds for TLS 1.2/1.3, so the refusals above are meaningful."""
    result = tls_handshake(address, flag)
    assert result.returncode == 0, result.stderr[-500:]


def test_tls12_uses_an_aead_suite(address):
    result = tls_handshake(address, "-tls1_2")
    cipher = next(line for line in result.stdout.splitlines() if "Cipher is" in line)
    assert "GCM" in cipher or "CHACHA20" in cipher, cipher


def test_handshake_without_sni_is_refused(address):
    assert tls_handshake(address, "-tls1_2", servername=None).returncode != 0


def test_api_answers_503_until_it_is_deployed(address, ca_file):
    assert status_of(address, ca_file, "https://api.localhost/v2/health/ready") == 503


def test_api_security_headers(address, ca_file):
    result = curl(address, ca_file, "https://api.localhost/", "-o", "/dev/null", "-D", "-")
    headers = {
        k.strip().lower(): v.strip()
        for k, _, v in (line.partition(":") for line in result.stdout.splitlines()[1:])
        if k
    }
    assert headers["strict-transport-security"].startswith("max-age=31536000")
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    assert headers["referrer-policy"] == "no-referrer"
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp


@pytest.fixture(scope="module")
def metrics_password(host) -> str:
    with host.sudo():
        return host.file(METRICS_PASSWORD_FILE).content_string


def test_metrics_password_file_is_root_only(host):
    with host.sudo():
        f = host.file(METRICS_PASSWORD_FILE)
        assert f.user == "root" and f.mode == 0o600


def test_metrics_demands_credentials(address, ca_file, metrics_password):
    url = "https://metrics.localhost/-/healthy"
    assert status_of(address, ca_file, url) == 401
    assert status_of(address, ca_file, url, "-u", "ops:wrong-password") == 401
    assert status_of(address, ca_file, url, "-u", f"ops:{metrics_password}") == 200


def test_metrics_hash_is_bcrypt_and_not_in_configuration(host, metrics_password):
    with host.sudo():
        htpasswd = host.file("/etc/appliance/secrets/traefik-metrics.htpasswd").content_string
        config = host.check_output(
            "cat /etc/appliance/traefik/traefik.yml /etc/appliance/traefik/dynamic/*.yml"
        )
    assert htpasswd.startswith("ops:$2y$")
    assert metrics_password not in htpasswd
    assert metrics_password not in config and "$2y$" not in config


def test_traefik_metrics_port_is_not_published(host, address):
    # Nothing listens on the host (rootlessport would, for a published port) ...
    with host.sudo():
        assert host.check_output("ss -Htln 'sport = :8082'") == ""
        firewalled = host.run("nft list table inet appliance_filter").rc == 0
    # ... and the controller sees it: refused (the machine answers RST) without the appliance
    # firewall, not a time-out that a broken route would also give; with it (the whole site),
    # the probe is dropped like every port the firewall does not open.
    with socket.socket() as probe:
        probe.settimeout(5 if firewalled else 10)
        with pytest.raises(TimeoutError if firewalled else ConnectionRefusedError):
            probe.connect((address, 8082))


def test_access_log_lines_are_json(host, address, ca_file):
    status_of(
        address,
        ca_file,
        "https://api.localhost/access-log-probe",
        "-H",
        "Authorization: Bearer probe-token",
    )
    with host.sudo():
        log = host.file(ACCESS_LOG)
        assert log.user == TRAEFIK_ACCOUNT
        lines = host.check_output(f"tail -n 20 {ACCESS_LOG}").splitlines()
    records = [json.loads(line) for line in lines]
    probe = [r for r in records if r.get("RequestPath") == "/access-log-probe"]
    assert probe, "the probe request is missing from the access log"
    assert probe[-1]["RequestHost"] == "api.localhost"
    assert probe[-1]["DownstreamStatus"] == 503
    assert "probe-token" not in json.dumps(probe[-1]), "request credentials leaked into the log"
