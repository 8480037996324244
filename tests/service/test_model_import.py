"""POST /admin/models/import over HTTP: an admin imports the drop box's signed versions, each
result is in the answer and in the audit record, and an import activates nothing."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_support import NewDeployment, Server, bearer, running
from signed_models import SigningKeys, make_keys, make_signed_model
from waiting import wait_until


@pytest.fixture(scope="module")
def dropbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("dropbox")
    (d / "iris").mkdir()
    return d


@pytest.fixture(scope="module")
def import_server(new_deployment: NewDeployment, dropbox: Path) -> Iterator[Server]:
    env = {"ML_SERVICE_KEY_PREFIX": "imp", "ML_SERVICE_DROPBOX_DIR": str(dropbox)}
    with running(new_deployment("import", env), workers=1) as server:
        yield server


def _audit_record(server: Server, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        lines = server.deployment.audit_log.read_text().splitlines()
        return next((r for r in map(json.loads, lines) if r["request_id"] == request_id), None)

    return wait_until(find, f"the audit record of {request_id}")


def test_import_copies_the_signed_refuses_the_rest_and_activates_nothing(
    import_server: Server, dropbox: Path, model_keys: SigningKeys, tmp_path: Path
) -> None:
    admin = import_server.token("alice-admin")
    url = import_server.url
    before = httpx.get(url + "/admin/models", headers=bearer(admin)).json()
    signed = make_signed_model(dropbox, model_keys, random_state=21)
    stranger = make_signed_model(dropbox, make_keys(tmp_path / "stranger"), random_state=22)
    unsigned = make_signed_model(dropbox, model_keys, random_state=23)
    (unsigned / "manifest.sig").unlink()

    r = httpx.post(url + "/admin/models/import", headers=bearer(admin), timeout=30)
    assert r.status_code == 200, r.text
    results = {x["version"]: (x["status"], x["reason"]) for x in r.json()["results"]}
    assert results == {
        signed.name: ("imported", None),
        stranger.name: ("refused", "untrusted_key"),
        unsigned.name: ("refused", "missing_signature"),
    }
    record = _audit_record(import_server, r.headers["x-request-id"])
    assert record["action"] == "models.import" and record["user"] == "alice-admin"
    assert f"{signed.name} imported" in record["detail"]
    assert f"{unsigned.name} refused (missing_signature)" in record["detail"]

    after = httpx.get(url + "/admin/models", headers=bearer(admin)).json()
    assert after["active"] == before["active"]
    statuses = {v["version"]: v["status"] for v in after["versions"]}
    assert statuses[signed.name] == "available"
    assert stranger.name not in statuses and unsigned.name not in statuses

    # Activation is the admin's own, separate step.
    r = httpx.post(url + f"/admin/models/{signed.name}/activate", headers=bearer(admin))
    assert r.status_code == 200 and r.json()["version"] == signed.name
    r = httpx.post(url + "/admin/models/import", headers=bearer(admin), timeout=30)
    assert {x["version"]: x["status"] for x in r.json()["results"]}[signed.name] == "present"
    for d in (signed, stranger, unsigned):
        shutil.rmtree(d)


def test_only_a_models_admin_imports(import_server: Server) -> None:
    for user, status in (("paul-predictor", 403), ("vera-viewer", 403)):
        r = httpx.post(
            import_server.url + "/admin/models/import",
            headers=bearer(import_server.token(user)),
        )
        assert r.status_code == status, r.text
        assert "models:admin" in r.json()["error"]["message"]
    r = httpx.post(import_server.url + "/admin/models/import")
    assert r.status_code == 401
