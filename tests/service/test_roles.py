"""The role x endpoint matrix, anonymous included; a 403 names the missing permission."""

from __future__ import annotations

import httpx
import pytest
from service_support import ROW, bearer

FEEDBACK = {"request_id": "0" * 32, "true_class": 0}
INFER = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}

# (method, path, json body, permission) -> expected status for anonymous, viewer, predictor, admin
MATRIX = [
    ("POST", "/predict", {"features": ROW}, "predict", (401, 403, 200, 200)),
    ("POST", "/v2/models/iris/infer", INFER, "predict", (401, 403, 200, 200)),
    ("GET", "/model/info", None, "model:read", (401, 200, 200, 200)),
    ("GET", "/v2/models/iris", None, "model:read", (401, 200, 200, 200)),
    ("GET", "/metrics", None, "metrics:read", (401, 200, 403, 200)),
    # an unknown request id: 404 once authorised
    ("POST", "/feedback", FEEDBACK, "feedback:write", (401, 403, 404, 404)),
    ("GET", "/admin/models", None, "models:admin", (401, 403, 403, 200)),
    ("POST", "/admin/models/rollback", None, "models:admin", (401, 403, 403, None)),
    # the shared server has no drop box: 404 once authorised
    ("POST", "/admin/models/import", None, "models:admin", (401, 403, 403, 404)),
    ("POST", "/admin/models/{active}/activate", None, "models:admin", (401, 403, 403, 200)),
    ("GET", "/admin/users", None, "users:admin", (401, 403, 403, 200)),
    ("POST", "/token/revoke", None, None, (401, None, None, None)),
    ("GET", "/health/live", None, None, (200, 200, 200, 200)),
    ("GET", "/health/ready", None, None, (200, 200, 200, 200)),
    ("GET", "/v2/health/live", None, None, (200, 200, 200, 200)),
    ("GET", "/v2/health/ready", None, None, (200, 200, 200, 200)),
]
WHO = ("anonymous", "viewer", "predictor", "admin")


def _cases() -> list[tuple[str, str, dict | None, str | None, str, int]]:
    out = []
    for method, path, body, permission, expected in MATRIX:
        for who, status in zip(WHO, expected, strict=True):
            if status is not None:  # None: would change the shared server's state
                out.append((method, path, body, permission, who, status))
    return out


@pytest.mark.parametrize(
    ("method", "path", "body", "permission", "who", "expected"),
    _cases(),
    ids=[f"{c[4]}-{c[0]}-{c[1]}" for c in _cases()],
)
def test_role_matrix(
    client: httpx.Client,
    tokens: dict[str, str],
    method: str,
    path: str,
    body: dict | None,
    permission: str | None,
    who: str,
    expected: int,
) -> None:
    if "{active}" in path:
        active = client.get("/model/info", headers=bearer(tokens["admin"])).json()["version"]
        path = path.replace("{active}", active)
    headers = bearer(tokens[who]) if who != "anonymous" else {}
    r = client.request(method, path, json=body, headers=headers)
    assert r.status_code == expected, r.text
    if path.startswith("/v2") and expected >= 400:
        # The Open Inference Protocol's error body: {"error": "<message>"}.
        assert isinstance(r.json()["error"], str)
        if expected == 403:
            assert permission in r.json()["error"]
        return
    if expected == 403:
        err = r.json()["error"]
        assert err["missing_permission"] == permission
        assert permission in err["message"]
    if expected >= 400:
        assert r.json()["error"]["request_id"] == r.headers["x-request-id"]
