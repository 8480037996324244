"""Render the traefik role's templates with Ansible and check them on the controller.

The static configuration is validated against Traefik v3's JSON schema, the file-provider
configuration against the dynamic schema (both vendored in files/schemas/traefik, their source
in SOURCE.md there), then the appliance's own rules are checked: HTTPS-only routers, a guarded
metrics route, TLS 1.2+, security headers, and a container unit that publishes only 80/443.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from local_playbook import role_playbook, run_local_playbook

REPO = Path(__file__).resolve().parents[2]
ROLE = REPO / "roles" / "traefik"
SCHEMA_DIR = REPO / "files" / "schemas" / "traefik"
STATIC_SCHEMA = SCHEMA_DIR / "traefik-v3.json"
DYNAMIC_SCHEMA = SCHEMA_DIR / "traefik-v3-file-provider.json"
DYNAMIC_FILES = ("routers.yml", "middlewares.yml", "tls.yml")

# Variants of the role's input that change the rendered configuration.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "acme-tls": {"traefik_acme_enabled": True, "traefik_acme_email": "ops@example.org"},
    "acme-http": {
        "traefik_acme_enabled": True,
        "traefik_acme_email": "ops@example.org",
        "traefik_acme_challenge": "http",
    },
}

# The play after its header (local_playbook.role_playbook).
PLAYBOOK = """
  vars:
    # facts the podman role's service entry point gives the unit template
    podman_service_uid: "995"
    podman_service_image: localhost/appliance/traefik:local
    out: {out}
    variant: {{}}
  tasks:
    - name: Create the output directories
      ansible.builtin.file:
        path: "{{{{ out }}}}/dynamic"
        state: directory
        mode: "0755"
    - name: Render the static configuration and the unit
      ansible.builtin.template:
        src: {role}/templates/{{{{ item }}}}.j2
        dest: "{{{{ out }}}}/{{{{ item }}}}"
        mode: "0644"
      loop: [traefik.yml, traefik.container]
    - name: Render the dynamic configuration
      ansible.builtin.template:
        src: {role}/templates/dynamic/{{{{ item }}}}.j2
        dest: "{{{{ out }}}}/dynamic/{{{{ item }}}}"
        mode: "0644"
      loop: {dynamic}
"""


def _load_schema(path: Path) -> dict[str, Any]:
    if not path.is_file():
        pytest.fail(
            f"Traefik JSON schema missing: {path}. The schemas are vendored in "
            f"files/schemas/traefik/ (SOURCE.md there names where they come from)."
        )
    return json.loads(path.read_text(encoding="utf-8"))


def _validate(document: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    validator = validator_cls(schema)
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    ]


def _render(tmp: Path, name: str, extra: dict[str, Any]) -> Path:
    out = tmp / name
    playbook = tmp / f"render-{name}.yml"
    playbook.write_text(
        role_playbook(
            ROLE,
            "Render the traefik role's templates",
            PLAYBOOK.format(role=ROLE, out=out, dynamic=json.dumps(list(DYNAMIC_FILES))),
        ),
        encoding="utf-8",
    )
    result = run_local_playbook(playbook, extra)
    assert result.returncode == 0, f"rendering failed:\n{result.stdout}\n{result.stderr}"
    return out


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("traefik")
    return {name: _render(tmp, name, extra) for name, extra in VARIANTS.items()}


def _static(out: Path) -> dict[str, Any]:
    return yaml.safe_load((out / "traefik.yml").read_text(encoding="utf-8"))


def _dynamic(out: Path) -> dict[str, dict[str, Any]]:
    return {
        name: yaml.safe_load((out / "dynamic" / name).read_text(encoding="utf-8"))
        for name in DYNAMIC_FILES
    }


def _merged_http(out: Path) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {"routers": {}, "services": {}, "middlewares": {}}
    for document in _dynamic(out).values():
        for kind, items in document.get("http", {}).items():
            merged[kind].update(items)
    return merged


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_static_configuration_matches_schema(rendered: dict[str, Path], variant: str) -> None:
    errors = _validate(_static(rendered[variant]), _load_schema(STATIC_SCHEMA))
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("name", DYNAMIC_FILES)
def test_dynamic_configuration_matches_schema(
    rendered: dict[str, Path], variant: str, name: str
) -> None:
    document = _dynamic(rendered[variant])[name]
    assert document, f"{name} rendered empty"
    errors = _validate(document, _load_schema(DYNAMIC_SCHEMA))
    assert not errors, "\n".join(errors)


def test_schema_check_catches_a_wrong_option() -> None:
    """The schemas reject a misspelt option (else the tests above would prove little)."""
    bad = {"http": {"middlewares": {"m": {"headers": {"stsSecond": 1}}}}}
    assert _validate(bad, _load_schema(DYNAMIC_SCHEMA))
    assert _validate({"entryPoints": {"web": {"adress": ":80"}}}, _load_schema(STATIC_SCHEMA))


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_router_is_https_only(rendered: dict[str, Path], variant: str) -> None:
    routers = _merged_http(rendered[variant])["routers"]
    assert set(routers) == {"api", "api-token", "api-grpc", "dev", "metrics", "alertmanager"}
    for name, router in routers.items():
        # The API's routers also serve the IDE's entrypoint (HTTPS too); no other router does.
        wanted = ["websecure", "ide"] if name.startswith("api") else ["websecure"]
        assert router.get("entryPoints") == wanted, name
        assert isinstance(router.get("tls"), dict), f"router {name} has no tls section"
        if variant.startswith("acme"):
            assert router["tls"].get("certResolver") == "acme", name


def test_routers_point_at_the_right_hosts_and_services(rendered: dict[str, Path]) -> None:
    http = _merged_http(rendered["defaults"])
    expected = {
        "api": ("api.localhost", "http://ml-api:8000"),
        "dev": ("dev.localhost", "http://code-server:8080"),
        "metrics": ("metrics.localhost", "http://prometheus:9090"),
    }
    for name, (host, url) in expected.items():
        router = http["routers"][name]
        assert router["rule"] == f"Host(`{host}`)"
        servers = http["services"][router["service"]]["loadBalancer"]["servers"]
        assert servers == [{"url": url}]


def test_alertmanager_is_a_path_of_the_metrics_host_with_the_same_login(
    rendered: dict[str, Path],
) -> None:
    http = _merged_http(rendered["defaults"])
    router = http["routers"]["alertmanager"]
    assert router["rule"] == "Host(`metrics.localhost`) && PathPrefix(`/alertmanager`)"
    assert router["middlewares"] == http["routers"]["metrics"]["middlewares"]
    servers = http["services"][router["service"]]["loadBalancer"]["servers"]
    assert servers == [{"url": "http://alertmanager:9093"}]


def test_api_is_health_checked_so_clients_get_503_until_it_is_ready(
    rendered: dict[str, Path],
) -> None:
    service = _merged_http(rendered["defaults"])["services"]["ml-api"]["loadBalancer"]
    assert service["healthCheck"]["path"] == "/v2/health/ready"


def _middlewares_of(http: dict[str, dict[str, Any]], router: str) -> list[dict[str, Any]]:
    names = http["routers"][router].get("middlewares", [])
    missing = [n for n in names if n not in http["middlewares"]]
    assert not missing, f"router {router} uses undefined middlewares {missing}"
    return [http["middlewares"][n] for n in names]


def test_metrics_route_has_allowlist_then_basic_auth_from_a_file(
    rendered: dict[str, Path],
) -> None:
    chain = _middlewares_of(_merged_http(rendered["defaults"]), "metrics")
    kinds = [next(iter(m)) for m in chain]
    assert "ipAllowList" in kinds and "basicAuth" in kinds
    assert kinds.index("ipAllowList") < kinds.index("basicAuth")
    auth = chain[kinds.index("basicAuth")]["basicAuth"]
    assert "users" not in auth, "credentials must not be inline in the configuration"
    assert auth["usersFile"].startswith("/run/secrets/")
    assert chain[kinds.index("ipAllowList")]["ipAllowList"]["sourceRange"]


@pytest.mark.parametrize("router", ["api", "api-token", "api-grpc", "dev", "metrics"])
def test_every_route_sends_security_headers(rendered: dict[str, Path], router: str) -> None:
    chain = _middlewares_of(_merged_http(rendered["defaults"]), router)
    headers = [m["headers"] for m in chain if "headers" in m]
    assert len(headers) == 1, f"router {router} needs exactly one headers middleware"
    h = headers[0]
    assert h["stsSeconds"] >= 15552000 and h["forceSTSHeader"] is True
    assert h["contentTypeNosniff"] is True
    assert h.get("frameDeny") is True or h.get("customFrameOptionsValue") == "SAMEORIGIN"
    assert h["referrerPolicy"]
    if router.startswith("api"):
        assert h["frameDeny"] is True
        csp = h["contentSecurityPolicy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_tls_is_1_2_or_later_with_aead_suites_and_strict_sni(
    rendered: dict[str, Path], variant: str
) -> None:
    tls = _dynamic(rendered[variant])["tls.yml"]["tls"]
    options = tls["options"]["default"]
    assert options["minVersion"] in ("VersionTLS12", "VersionTLS13")
    assert options["sniStrict"] is True
    for suite in options["cipherSuites"]:
        assert suite.startswith("TLS_ECDHE_"), suite
        assert suite.endswith(("_GCM_SHA256", "_GCM_SHA384", "_CHACHA20_POLY1305_SHA256")), suite
    if variant == "defaults":
        # The key is a Podman secret. The certificate (public) is in the watched directory the
        # renewal timer publishes to, so a renewed one is reloaded without a restart.
        for cert in [*tls["certificates"], tls["stores"]["default"]["defaultCertificate"]]:
            assert cert["certFile"] == "/etc/traefik/dynamic/server.crt"
            assert cert["keyFile"].startswith("/run/secrets/")
    else:
        assert "certificates" not in tls


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_http_redirects_to_https_and_metrics_stay_internal(
    rendered: dict[str, Path], variant: str
) -> None:
    static = _static(rendered[variant])
    entry_points = static["entryPoints"]
    redirect = entry_points["web"]["http"]["redirections"]["entryPoint"]
    assert redirect == {"to": "websecure", "scheme": "https", "permanent": True}
    assert static["metrics"]["prometheus"]["entryPoint"] == "metrics"
    assert static["ping"]["entryPoint"] == "metrics"
    assert static["accessLog"]["format"] == "json"
    assert static["accessLog"]["fields"]["headers"]["defaultMode"] == "drop"
    assert "api" not in static, "the dashboard/API must stay off"
    unit = (rendered[variant] / "traefik.container").read_text(encoding="utf-8").splitlines()
    # Nothing published: clients come through systemd's sockets (their real address kept).
    assert not [line for line in unit if line.startswith("PublishPort=")]
    sockets = "traefik-web.socket traefik-websecure.socket"
    for wanted in (f"Requires={sockets}", f"After={sockets}", f"Sockets={sockets}"):
        assert wanted in unit, f"{wanted} missing from traefik.container"
    # The internal entrypoints listen on one network each, never on every address.
    assert entry_points["metrics"]["address"] == "10.89.12.2:8082"
    assert entry_points["ide"]["address"] == "10.89.11.2:443"
    assert entry_points["ide"]["http"]["tls"]
    networks = [line for line in unit if line.startswith("Network=")]
    expected = [
        "Network=edge-api.network:ip=10.89.10.2",
        "Network=edge-ide.network:ip=10.89.11.2,alias=api.localhost",
        "Network=edge-metrics.network:ip=10.89.12.2",
    ]
    if variant.startswith("acme"):
        expected.append("Network=egress-traefik.network")
    assert networks == expected
    if variant.startswith("acme"):
        resolver = static["certificatesResolvers"]["acme"]["acme"]
        assert resolver["email"] == "ops@example.org"
        assert ("httpChallenge" in resolver) == (variant == "acme-http")


def test_container_unit_is_locked_down(rendered: dict[str, Path]) -> None:
    lines = (rendered["defaults"] / "traefik.container").read_text(encoding="utf-8").splitlines()
    for wanted in (
        "ReadOnly=true",
        "DropCapability=all",
        "NoNewPrivileges=true",
        # its own UID, not the service account's (that is what keep-id would map in)
        "User=995",
        "Group=995",
        "LogDriver=journald",
        "Restart=always",
        "HealthCmd=/usr/local/bin/traefik healthcheck --ping",
    ):
        assert wanted in lines, f"{wanted} missing from traefik.container"
    assert not any(line.startswith(("AddCapability", "Environment=", "UserNS=")) for line in lines)
