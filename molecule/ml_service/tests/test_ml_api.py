"""The ML API as deployed by the ml_service role: unit, confinement, auth, metrics, audit, models.

Requests go to the API from inside its own container (``podman exec``): the API has no
published port, only Traefik and Prometheus reach it on the internal backend network.
"""

from __future__ import annotations

import json
import shlex

import pytest

USER = "appliance"
# The API's own host account (podman role: <podman_user>-<container>, podman_service_ids).
API_ACCOUNT = f"{USER}-ml-api"
SECRETS = "/etc/appliance/secrets"
MODELS = "/srv/appliance/models/iris"
AUDIT = "/var/log/appliance/ml-api/audit.log"

# Runs inside the container: one HTTP exchange with the API on loopback, JSON on stdout.
CLIENT = r"""
import json, sys, urllib.error, urllib.parse, urllib.request
req = json.loads(sys.stdin.read())
body = req.get("body")
headers = req.get("headers", {})
if req.get("form") is not None:
    body = urllib.parse.urlencode(req["form"]).encode()
    headers["Content-Type"] = "application/x-www-form-urlencoded"
elif body is not None:
    body = json.dumps(body).encode()
    headers["Content-Type"] = "application/json"
r = urllib.request.Request("http://127.0.0.1:8000" + req["path"], data=body, headers=headers,
                           method=req.get("method", "GET"))
try:
    with urllib.request.urlopen(r, timeout=10) as resp:
        status, text = resp.status, resp.read().decode()
except urllib.error.HTTPError as exc:
    status, text = exc.code, exc.read().decode()
print(json.dumps({"status": status, "text": text}))
"""


def as_user(host, command: str):
    return host.run(
        f"cd / && runuser -u {USER} -- env XDG_RUNTIME_DIR=/run/user/$(id -u {USER}) {command}"
    )


def call(host, path: str, method: str = "GET", **request) -> tuple[int, str]:
    payload = json.dumps({"path": path, "method": method, **request})
    cmd = f"podman exec -i ml-api python -c {shlex.quote(CLIENT)} <<'EOF'\n{payload}\nEOF"
    result = as_user(host, cmd)
    assert result.rc == 0, result.stderr
    answer = json.loads(result.stdout)
    return answer["status"], answer["text"]


def password(host, user: str) -> str:
    return host.check_output(f"cat {SECRETS}/ml-api-users/{user}").strip()


def token(host, user: str) -> str:
    status, text = call(
        host, "/token", "POST", form={"username": user, "password": password(host, user)}
    )
    assert status == 200, text
    return json.loads(text)["access_token"]


def bearer(tok: str) -> dict[str, dict[str, str]]:
    return {"headers": {"Authorization": f"Bearer {tok}"}}


def test_unit_active_under_the_service_account(host):
    state = as_user(host, "systemctl --user is-active ml-api.service")
    assert state.stdout.strip() == "active", state.stdout + state.stderr


def test_container_confined(host):
    out = as_user(host, "podman inspect ml-api")
    assert out.rc == 0, out.stderr
    info = json.loads(out.stdout)[0]
    assert info["HostConfig"]["ReadonlyRootfs"] is True
    assert info["EffectiveCaps"] in (None, [])
    assert "no-new-privileges" in info["HostConfig"]["SecurityOpt"]
    assert info["Config"]["User"].split(":")[0] not in ("", "0", "root")
    assert info["HostConfig"]["PortBindings"] in (None, {})
    # Secrets are files, never environment variables.
    env = "\n".join(info["Config"]["Env"])
    for secret in ("ml-api-jwt.key", "ml-api-metrics-token"):
        value = host.check_output(f"cat {SECRETS}/{secret}").strip()
        assert value not in env


def test_api_processes_run_as_its_own_host_account(host):
    """Not root, and not the service account (which is root of the containers' namespace)."""
    pids = as_user(host, "podman top ml-api hpid").stdout.split()[1:]
    assert pids
    for pid in pids:
        owner = host.check_output(f"stat -c %U /proc/{pid}")
        assert owner == API_ACCOUNT


def test_workers_serve_arrays_without_scikit_learn(host):
    # The model is converted in a short-lived child; the processes that stay never map a
    # scikit-learn library, and each stays under the 150 MiB of issue 19.
    status, text = call(host, "/model/info", **bearer(token(host, "victor")))
    assert status == 200 and json.loads(text)["backend"] == "numpy-forest", text
    pids = as_user(host, "podman top ml-api hpid").stdout.split()[1:]
    assert len(pids) >= 2, pids  # uvicorn's supervisor and its workers
    for pid in pids:
        maps = host.check_output(f"cat /proc/{pid}/maps")
        assert "/sklearn/" not in maps and "/scipy/" not in maps, pid
        rss_kib = int(host.check_output(f"awk '/^VmRSS/ {{print $2}}' /proc/{pid}/status"))
        assert rss_kib < 150 * 1024, (pid, rss_kib)
    # The journald log driver: the container's lines are in the system journal.
    logs = host.run("sudo journalctl CONTAINER_NAME=ml-api --no-pager -o cat")
    assert logs.rc == 0 and "uvicorn" in logs.stdout, logs.stderr
    assert "child process failed" not in logs.stdout


def test_secrets_are_root_only_on_the_host(host):
    for name in ("ml-api-jwt.key", "model-signing-bootstrap.key", "ml-api-users/admin"):
        f = host.file(f"{SECRETS}/{name}")
        assert f.user == "root" and f.mode & 0o077 == 0, name


def test_bootstrap_model_is_signed(host):
    versions = host.check_output(f"ls {MODELS}").split()
    dirs = [v for v in versions if host.file(f"{MODELS}/{v}/manifest.json").exists]
    assert dirs, versions
    for name in ("model.joblib", "metadata.json", "manifest.json", "manifest.sig"):
        assert host.file(f"{MODELS}/{dirs[0]}/{name}").exists


def test_users_created_with_roles(host):
    listing = host.check_output("/usr/local/sbin/ml-api-users list")
    roles = dict(line.split("\t")[:2] for line in listing.splitlines())
    assert roles == {"admin": "admin", "alice": "predictor", "victor": "viewer"}
    users = host.file("/var/lib/appliance/ml-api/users/users.json").content_string
    assert "$argon2id$" in users
    assert password(host, "alice") not in users


def test_readiness_sees_model_and_redis(host):
    status, text = call(host, "/health/ready")
    assert status == 200, text


def test_predict_with_a_token(host):
    status, text = call(
        host,
        "/predict",
        "POST",
        body={"features": [5.1, 3.5, 1.4, 0.2]},
        **bearer(token(host, "alice")),
    )
    assert status == 200, text
    answer = json.loads(text)
    assert answer["class_name"] == "setosa"
    assert answer["model_version"]


def test_anonymous_and_wrong_role_refused(host):
    status, _ = call(host, "/predict", "POST", body={"features": [5.1, 3.5, 1.4, 0.2]})
    assert status == 401
    status, text = call(
        host,
        "/predict",
        "POST",
        body={"features": [5.1, 3.5, 1.4, 0.2]},
        **bearer(token(host, "victor")),
    )
    assert status == 403, text
    assert "error" in json.loads(text) or "detail" in json.loads(text)


def test_wrong_password_refused_without_detail(host):
    status, text = call(
        host, "/token", "POST", form={"username": "alice", "password": "wrong-password-1"}
    )
    assert status == 401
    assert "Traceback" not in text


def test_bad_input_is_a_json_4xx(host):
    status, text = call(
        host, "/predict", "POST", body={"features": [1, 2, 3]}, **bearer(token(host, "alice"))
    )
    assert status == 422, text
    assert "request_id" in text


def test_metrics_need_the_scrape_token(host):
    status, _ = call(host, "/metrics")
    assert status == 401
    scrape = host.check_output(f"cat {SECRETS}/ml-api-metrics-token").strip()
    status, text = call(host, "/metrics", **bearer(scrape))
    assert status == 200
    assert "ml_api_requests_total" in text


def test_audit_log_chained_and_free_of_secrets(host):
    call(host, "/token", "POST", form={"username": "alice", "password": password(host, "alice")})
    log = host.file(AUDIT)
    assert log.exists and log.user == API_ACCOUNT
    text = log.content_string
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    assert any(rec.get("action") for rec in lines)
    assert password(host, "alice") not in text
    # As the API's UID in its container: only it (and root) may read the log directory.
    api_user = as_user(host, "podman inspect --format '{{.Config.User}}' ml-api").stdout.strip()
    assert api_user and not api_user.startswith("0"), api_user
    verify = as_user(
        host,
        f"podman run --rm --network=none --read-only --user={api_user} "
        "--volume=/var/log/appliance/ml-api:/logs:ro localhost/appliance/ml-api:local "
        # The whole series: on the appliance, the log-rotation tests may have rotated it first.
        "audit verify --rotated /logs/audit.log",
    )
    assert verify.rc == 0, verify.stdout + verify.stderr


@pytest.fixture
def tampered_version(host):
    """A version whose directory, manifest and signature are genuine (so the name and
    signature checks pass) but whose model file was changed afterwards: only the hash check
    can refuse it. The older version when there are two, else the served one (its verified
    copy in memory keeps serving); the file is restored afterwards."""
    versions = sorted(
        v
        for v in host.check_output(f"ls {MODELS}").split()
        if host.file(f"{MODELS}/{v}/manifest.json").exists
    )
    good = versions[-1]
    bad = versions[0]
    model = f"{MODELS}/{bad}/model.joblib"
    host.check_output(f"cp -a {model} /var/tmp/untampered.joblib")
    host.check_output(f"printf x >> {model}")
    yield good, bad
    host.check_output(f"mv /var/tmp/untampered.joblib {model}")


def test_tampered_model_refused_and_previous_keeps_serving(host, tampered_version):
    good, bad = tampered_version
    admin = bearer(token(host, "admin"))
    status, text = call(host, f"/admin/models/{bad}/activate", "POST", **admin)
    assert status == 409, text
    # Refused by the hash check it is named for, not by an earlier identity check.
    assert "hash_mismatch" in json.loads(text)["error"]["message"], text
    status, text = call(host, "/model/info", **admin)
    assert status == 200 and json.loads(text)["version"] == good, text
    status, text = call(
        host,
        "/predict",
        "POST",
        body={"features": [6.7, 3.0, 5.2, 2.3]},
        **bearer(token(host, "alice")),
    )
    assert status == 200, text
