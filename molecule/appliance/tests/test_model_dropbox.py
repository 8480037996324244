"""The IDE publishes models into its drop box and sees nothing the API serves; an admin's import
copies in what is signed by a trusted key, refuses the rest with the reason, and activates
nothing. Tried as a data scientist's shell would: from inside the code-server container."""

from __future__ import annotations

import json
import shlex

import pytest
from on_host import AS_SERVICE

DROPBOX = "/srv/appliance/dropbox"
REGISTRY = "/srv/appliance/models"
AUDIT = "/var/log/appliance/ml-api/audit.log"
REPLAYED = "20200101T000000Z"  # a signed version copied under another name
UNSIGNED = "20200101T000001Z"  # the same, its signature removed

# On the host: log in as admin through Traefik, call the import, then list the versions.
_ADMIN = r"""
import json, socket, ssl, sys, urllib.parse
ctx = ssl.create_default_context(cafile="/etc/appliance/ca.crt")
def call(method, path, body=b"", headers=()):
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", 443), timeout=30),
                         server_hostname="api.localhost") as tls:
        head = f"{method} {path} HTTP/1.1\r\nHost: api.localhost\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers)
        tls.sendall((head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body)
        raw = b"".join(iter(lambda: tls.recv(65536), b""))
    head, _, payload = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    if "chunked" in head.decode().lower():
        out, rest = b"", payload
        while True:
            size, _, rest = rest.partition(b"\r\n")
            if int(size, 16) == 0:
                break
            out, rest = out + rest[: int(size, 16)], rest[int(size, 16) + 2 :]
        payload = out
    hdrs = dict(l.split(": ", 1) for l in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in hdrs.items()}, json.loads(payload)
password = open("/etc/appliance/secrets/ml-api-users/admin").read().strip()
form = urllib.parse.urlencode({"username": "admin", "password": password}).encode()
_, _, tok = call("POST", "/token", form, [("Content-Type", "application/x-www-form-urlencoded")])
auth = [("Authorization", "Bearer " + tok["access_token"])]
status, hdrs, report = None, {}, None
if sys.argv[1:] == ["import"]:
    status, hdrs, report = call("POST", "/admin/models/import", b"", auth)
_, _, listing = call("GET", "/admin/models", b"", auth)
print(json.dumps({"status": status, "request_id": hdrs.get("x-request-id"),
                  "report": report, "listing": listing}))
"""


def _admin(host, action: str) -> dict:
    return json.loads(host.check_output(f"python3 -c {shlex.quote(_ADMIN)} {action}"))


def _in_ide(host, script: str):
    return host.run(AS_SERVICE + f"podman exec code-server bash -c {shlex.quote(script)}")


def test_the_ide_sees_its_drop_box_and_neither_the_registry_nor_the_audit_log(host):
    mounts = json.loads(
        host.check_output(AS_SERVICE + "podman inspect --format '{{json .Mounts}}' code-server")
    )
    sources = {m["Source"] for m in mounts}
    assert DROPBOX in sources, sources
    assert not [s for s in sources if s.startswith((REGISTRY, "/var/log/appliance"))], sources
    # From the IDE's shell: the drop box is writable, and nothing the API serves or records
    # exists anywhere in its file system.
    probe = _in_ide(host, "touch ~/dropbox/.probe && rm ~/dropbox/.probe && echo writable")
    assert probe.stdout.strip() == "writable", probe.stderr
    found = _in_ide(
        host,
        "find / -path /proc -prune -o \\( -name ACTIVE -o -name 'audit.log*' \\) -print "
        "2>/dev/null",
    )
    assert found.stdout.strip() == "", found.stdout


@pytest.fixture
def published(host):
    """A version signed with a trusted key (the host's bootstrap key, as an operator's signing
    step would) in the drop box, plus two forgeries of it made from inside the IDE; all removed
    afterwards, from the drop box and the registry."""
    image = host.check_output(AS_SERVICE + "podman inspect --format '{{.ImageName}}' ml-api")
    # Trained and signed as the IDE's own UID, into the drop box the IDE owns.
    ide = host.check_output(AS_SERVICE + "podman inspect --format '{{.Config.User}}' code-server")
    uid, _, gid = ide.strip().partition(":")
    before = set(host.check_output(f"ls {DROPBOX}/iris 2>/dev/null || true").split())
    train = (
        f"podman run --rm --network=none --read-only --user={uid}:{gid} "
        f"--volume={DROPBOX}:/out:rw "
        "--secret=ml-model-signing-bootstrap,type=mount,target=/run/secrets/signing.key,"
        f"uid={uid},gid={gid},mode=0400 --entrypoint=python {image} "
        "/opt/ml-api/workspace/train_model.py train --out=/out --name=iris "
        "--signing-key=/run/secrets/signing.key --n-estimators=10"
    )
    result = host.run(AS_SERVICE + train)
    assert result.rc == 0, result.stderr
    (version,) = set(host.check_output(f"ls {DROPBOX}/iris").split()) - before
    forge = (
        f"cd ~/dropbox/iris && cp -r {version} {REPLAYED} && cp -r {version} {UNSIGNED} "
        f"&& rm {UNSIGNED}/manifest.sig"
    )
    assert _in_ide(host, forge).rc == 0
    yield version
    for name in (version, REPLAYED, UNSIGNED):
        host.run(f"rm -rf {DROPBOX}/iris/{name} {REGISTRY}/iris/{name}")


def test_an_admin_imports_the_signed_version_and_the_forgeries_stay_out(host, published):
    before = _admin(host, "list")["listing"]
    assert published not in {v["version"] for v in before["versions"]}
    answer = _admin(host, "import")
    assert answer["status"] == 200, answer
    results = {r["version"]: (r["status"], r["reason"]) for r in answer["report"]["results"]}
    assert results == {
        published: ("imported", None),
        REPLAYED: ("refused", "manifest_identity_mismatch"),
        UNSIGNED: ("refused", "missing_signature"),
    }, results
    checksums = "cd {}/iris/{} && sha256sum * | sort"
    assert host.check_output(checksums.format(REGISTRY, published)) == host.check_output(
        checksums.format(DROPBOX, published)
    )
    for forged in (REPLAYED, UNSIGNED):
        assert not host.file(f"{REGISTRY}/iris/{forged}").exists
    listing = answer["listing"]
    assert listing["active"] == before["active"] != published
    assert {v["version"]: v["status"] for v in listing["versions"]}[published] == "available"
    record = json.loads(
        host.check_output(f"grep -F {shlex.quote(answer['request_id'])} {AUDIT} | tail -n 1")
    )
    assert record["action"] == "models.import" and record["user"] == "admin", record
    assert f"{UNSIGNED} refused (missing_signature)" in record["detail"], record
    again = _admin(host, "import")["report"]["results"]
    assert {r["version"]: r["status"] for r in again}[published] == "present"


def test_the_api_cannot_write_the_drop_box(host):
    """Read-only in the API's container: an import copies out of it, never changes it."""
    result = host.run(AS_SERVICE + "podman exec ml-api touch /dropbox/.probe")
    assert result.rc != 0 and "Read-only file system" in result.stderr, result.stderr
