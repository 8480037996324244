"""Admin model-registry endpoints (own server: they change the active model) and /feedback."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_support import ROW, RedisServer, Server, bearer, make_deployment

from ml_service.model.testing import SigningKeys


@pytest.fixture(scope="module")
def admin_server(
    tmp_path_factory: pytest.TempPathFactory,
    redis_server: RedisServer,
    trained_models: Path,
    model_keys: SigningKeys,
) -> Iterator[Server]:
    # Same Redis as the shared server, another key prefix: the two do not see each other.
    d = make_deployment(
        tmp_path_factory.mktemp("admin"),
        redis_server,
        trained_models,
        model_keys,
        {"ML_SERVICE_KEY_PREFIX": "adm"},
    )
    server = Server(d, workers=2)
    server.start()
    yield server
    server.stop()


def _served_versions(server: Server, token: str, n: int = 12) -> set[str]:
    with httpx.Client(base_url=server.url, limits=httpx.Limits(max_keepalive_connections=0)) as c:
        return {
            c.post("/predict", json={"features": ROW}, headers=bearer(token)).json()[
                "model_version"
            ]
            for _ in range(n)
        }


def _wait_all_serve(server: Server, token: str, version: str, timeout: float = 8.0) -> None:
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        seen = _served_versions(server, token)
        if seen == {version}:
            return
        time.sleep(0.3)
    raise AssertionError(f"workers serve {seen}, expected only {version}")


def test_list_activate_rollback(admin_server: Server) -> None:
    admin = admin_server.token("alice-admin")
    predictor = admin_server.token("paul-predictor")
    with httpx.Client(base_url=admin_server.url) as c:
        listing = c.get("/admin/models", headers=bearer(admin)).json()
        versions = sorted(v["version"] for v in listing["versions"])
        assert len(versions) == 2
        older, newer = versions
        assert listing["active"] == newer
        assert {v["status"] for v in listing["versions"]} == {"active", "available"}

        r = c.post(f"/admin/models/{older}/activate", headers=bearer(admin))
        assert r.status_code == 200 and r.json()["version"] == older
        _wait_all_serve(admin_server, predictor, older)

        r = c.post("/admin/models/rollback", headers=bearer(admin))
        assert r.status_code == 200 and r.json()["version"] == newer
        _wait_all_serve(admin_server, predictor, newer)

        r = c.post("/admin/models/20990101T000000Z/activate", headers=bearer(admin))
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"


def test_tampered_version_is_refused_and_audited(admin_server: Server) -> None:
    admin = admin_server.token("alice-admin")
    name_dir = admin_server.deployment.model_dir / "iris"
    source = sorted(p for p in name_dir.iterdir() if p.is_dir())[0]
    forged = name_dir / "20200101T000000Z"
    shutil.copytree(source, forged)  # its signed manifest names another version
    try:
        r = httpx.post(
            f"{admin_server.url}/admin/models/{forged.name}/activate", headers=bearer(admin)
        )
        assert r.status_code == 409, r.text
        assert "refused" in r.json()["error"]["message"]
        time.sleep(0.2)
        records = [
            json.loads(x) for x in admin_server.deployment.audit_log.read_text().splitlines()
        ]
        assert any(
            x["action"] == "model.integrity_check"
            and x["model_version"] == forged.name
            and x["outcome"] == "refused"
            for x in records
        )
        activation = [x for x in records if x["action"] == "models.activate" and x["status"] == 409]
        assert activation and activation[-1]["user"] == "alice-admin"
        # the previous model keeps serving
        predictor = admin_server.token("paul-predictor")
        assert len(_served_versions(admin_server, predictor, 4)) == 1
    finally:
        shutil.rmtree(forged)


def test_feedback(server: Server, tokens: dict[str, str]) -> None:
    h = bearer(tokens["predictor"])
    no_keepalive = httpx.Limits(max_keepalive_connections=0)
    with httpx.Client(base_url=server.url, limits=no_keepalive) as c:
        r = c.post("/predict", json={"instances": [ROW, [6.7, 3.0, 5.2, 2.3]]}, headers=h).json()
        rid = r["request_id"]
        first, second = r["predictions"]
        time.sleep(0.1)  # the prediction is stored after the response (fire and forget)
        ok = c.post(
            "/feedback", json={"request_id": rid, "true_class": first["class_name"]}, headers=h
        )
        assert ok.status_code == 200, ok.text
        assert ok.json()["correct"] is True and ok.json()["predicted_class"] == first["class_index"]
        wrong_class = (second["class_index"] + 1) % 3
        bad = c.post(
            "/feedback",
            json={"request_id": rid, "instance": 1, "true_class": wrong_class},
            headers=h,
        )
        assert bad.status_code == 200 and bad.json()["correct"] is False
        assert 0 <= bad.json()["rolling_accuracy"] < 1
        # each prediction is rated once; unknown ids and non-classes are refused
        again = c.post("/feedback", json={"request_id": rid, "true_class": 0}, headers=h)
        assert again.status_code == 404
        assert (
            c.post(
                "/feedback", json={"request_id": "f" * 32, "true_class": 0}, headers=h
            ).status_code
            == 404
        )
        other = c.post("/predict", json={"features": ROW}, headers=h).json()["request_id"]
        time.sleep(0.1)
        assert (
            c.post("/feedback", json={"request_id": other, "true_class": 7}, headers=h).status_code
            == 409
        )
        assert (
            c.post(
                "/feedback", json={"request_id": other, "true_class": "rose"}, headers=h
            ).status_code
            == 409
        )
        # predictions served by either worker can be rated on either worker
        ids = [
            c.post("/predict", json={"features": ROW}, headers=h).json()["request_id"]
            for _ in range(10)
        ]
        time.sleep(0.2)
        statuses = [
            c.post(
                "/feedback", json={"request_id": i, "true_class": "setosa"}, headers=h
            ).status_code
            for i in ids
        ]
        assert statuses == [200] * 10
        text = c.get("/metrics", headers=bearer(server.deployment.metrics_token)).text
    assert "ml_model_rolling_accuracy " in text
    assert 'ml_model_feedback_total{model_version="' in text


def test_activation_that_cannot_be_recorded_is_a_503(admin_server: Server) -> None:
    """A model directory the service cannot write (here: immutable) changes nothing."""
    admin = admin_server.token("alice-admin")
    predictor = admin_server.token("paul-predictor")
    name_dir = admin_server.deployment.model_dir / "iris"
    with httpx.Client(base_url=admin_server.url) as c:
        listing = c.get("/admin/models", headers=bearer(admin)).json()
        active = listing["active"]
        other = next(v["version"] for v in listing["versions"] if v["version"] != active)
        if subprocess.run(["chattr", "+i", str(name_dir)], check=False).returncode != 0:
            pytest.skip("chattr +i is not supported on this file system")
        try:
            r = c.post(f"/admin/models/{other}/activate", headers=bearer(admin))
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "unavailable"
            assert "cannot record" in r.json()["error"]["message"]
        finally:
            subprocess.run(["chattr", "-i", str(name_dir)], check=True)
        assert c.get("/admin/models", headers=bearer(admin)).json()["active"] == active
    _wait_all_serve(admin_server, predictor, active)
