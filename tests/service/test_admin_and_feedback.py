"""Admin model-registry endpoints (own server: they change the active model) and /feedback."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from service_support import ROW, NewDeployment, Server, bearer, running
from waiting import wait_until
from workers import every_worker, fresh, until_every_worker, worker_of


@pytest.fixture(scope="module")
def admin_server(new_deployment: NewDeployment) -> Iterator[Server]:
    with running(new_deployment("admin", {"ML_SERVICE_KEY_PREFIX": "adm"})) as server:
        yield server


def _predict(server: Server, token: str) -> httpx.Response:
    return fresh("POST", server.url + "/predict", json={"features": ROW}, headers=bearer(token))


def _wait_all_serve(server: Server, token: str, version: str) -> None:
    """Every worker follows to ``version`` (within its refresh period) and then stays on it."""
    until_every_worker(
        lambda: _predict(server, token),
        server.workers,
        lambda r: r.json()["model_version"] == version,
        f"every worker serves {version}",
    )

    def check(r: httpx.Response) -> None:
        assert r.json()["model_version"] == version, r.text

    every_worker(lambda: _predict(server, token), server.workers, check)


def _audit_records(server: Server) -> list[dict[str, Any]]:
    return [json.loads(x) for x in server.deployment.audit_log.read_text().splitlines()]


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
    active = fresh("GET", f"{admin_server.url}/admin/models", headers=bearer(admin)).json()[
        "active"
    ]
    name_dir = admin_server.deployment.model_dir / "iris"
    source = sorted(p for p in name_dir.iterdir() if p.is_dir())[0]
    forged = name_dir / "20200101T000000Z"
    shutil.copytree(source, forged)  # its signed manifest names another version
    try:
        r = fresh("POST", f"{admin_server.url}/admin/models/{forged.name}/activate",
                  headers=bearer(admin))  # fmt: skip
        assert r.status_code == 409, r.text
        assert "refused" in r.json()["error"]["message"]
        request_id = r.headers["x-request-id"]
        # The request's own record is written after the response has been sent.
        records = wait_until(
            lambda: (
                (rs := _audit_records(admin_server))
                and any(x["request_id"] == request_id for x in rs)
                and rs
            ),
            "the activation's audit record",
        )
        assert any(
            x["action"] == "model.integrity_check"
            and x["model_version"] == forged.name
            and x["outcome"] == "refused"
            for x in records
        )
        (activation,) = [x for x in records if x["request_id"] == request_id]
        assert activation["action"] == "models.activate" and activation["status"] == 409
        assert activation["user"] == "alice-admin"
        # the previous model keeps serving, on every worker
        predictor = admin_server.token("paul-predictor")
        _wait_all_serve(admin_server, predictor, active)
    finally:
        shutil.rmtree(forged)


def _rate(server: Server, token: str, **body: object) -> httpx.Response:
    """POST /feedback once the prediction has been stored: the service stores it after the
    response (fire and forget), so until then the id is unknown (404)."""
    last: list[httpx.Response] = []

    def attempt() -> httpx.Response | None:
        last[:] = [fresh("POST", server.url + "/feedback", json=body, headers=bearer(token))]
        return last[0] if last[0].status_code != 404 else None

    return wait_until(attempt, f"feedback for {body} is accepted or refused (not 404)")


def test_feedback(server: Server, tokens: dict[str, str]) -> None:
    token = tokens["predictor"]
    h = bearer(token)
    r = fresh(
        "POST", server.url + "/predict", json={"instances": [ROW, [6.7, 3.0, 5.2, 2.3]]}, headers=h
    ).json()
    rid = r["request_id"]
    first, second = r["predictions"]
    ok = _rate(server, token, request_id=rid, true_class=first["class_name"])
    assert ok.status_code == 200, ok.text
    assert ok.json()["correct"] is True and ok.json()["predicted_class"] == first["class_index"]
    wrong_class = (second["class_index"] + 1) % 3
    bad = fresh(
        "POST",
        server.url + "/feedback",
        json={"request_id": rid, "instance": 1, "true_class": wrong_class},
        headers=h,
    )
    assert bad.status_code == 200 and bad.json()["correct"] is False
    assert 0 <= bad.json()["rolling_accuracy"] < 1
    # each prediction is rated once; unknown ids and non-classes are refused
    again = fresh("POST", server.url + "/feedback", json={"request_id": rid, "true_class": 0},
                  headers=h)  # fmt: skip
    assert again.status_code == 404
    unknown = fresh("POST", server.url + "/feedback",
                    json={"request_id": "f" * 32, "true_class": 0}, headers=h)  # fmt: skip
    assert unknown.status_code == 404
    other = _predict(server, token).json()["request_id"]
    assert _rate(server, token, request_id=other, true_class=7).status_code == 409
    assert _rate(server, token, request_id=other, true_class="rose").status_code == 409
    # Predictions served by either worker can be rated on either worker: go on until both
    # directions (served by one, rated on the other) have happened.
    crossings: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 60
    while len(crossings) < server.workers * (server.workers - 1):
        assert time.monotonic() < deadline, f"only {crossings} in 60 s"
        served = _predict(server, token)
        rated = _rate(server, token, request_id=served.json()["request_id"], true_class="setosa")
        assert rated.status_code == 200, rated.text
        if worker_of(served) != worker_of(rated):
            crossings.add((worker_of(served), worker_of(rated)))
    text = fresh("GET", server.url + "/metrics", headers=bearer(server.deployment.metrics_token))
    assert "ml_model_rolling_accuracy " in text.text
    assert 'ml_model_feedback_total{model_version="' in text.text


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
