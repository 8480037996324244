"""Schemathesis hooks for test_schemathesis.py (loaded through SCHEMATHESIS_HOOKS).

* Every generated case gets its own freshly minted admin token (signed with the test
  deployment's key), so a generated call to /token/revoke cannot lock the run out.
* JSON Schema cannot say "shape must agree with data" for the v2 infer body; for
  positive (schema-valid) cases the shape is derived from the data, and the model
  name is the served one. Negative cases are left alone.
"""

from __future__ import annotations

import os
import secrets
import time

import jwt
import schemathesis

_KEY = open(os.environ["ST_SIGNING_KEY"]).read()  # noqa: SIM115
_KID = os.environ["ST_KID"]


@schemathesis.auth(refresh_interval=None)
class MintedAdminToken:
    def get(self, case, ctx):  # type: ignore[no-untyped-def]
        now = int(time.time())
        claims = {
            "iss": "https://api.localhost",
            "aud": "ml-api",
            "sub": "alice-admin",
            "role": "admin",
            "jti": secrets.token_urlsafe(12),
            "iat": now,
            "nbf": now,
            "exp": now + 300,
        }
        return jwt.encode(claims, _KEY, algorithm="ES256", headers={"kid": _KID})

    def set(self, case, data, ctx):  # type: ignore[no-untyped-def]
        case.headers = case.headers or {}
        case.headers["Authorization"] = f"Bearer {data}"


@schemathesis.hook
def map_case(ctx, case):  # type: ignore[no-untyped-def]
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return case
    if (
        case.path_parameters
        and "name" in case.path_parameters
        and case.path.startswith("/v2/models")
    ):
        case.path_parameters["name"] = "iris"
    body = case.body
    if case.path.endswith("/infer") and isinstance(body, dict):
        for tensor in body.get("inputs") or []:
            data = tensor.get("data")
            if not isinstance(data, list) or not data:
                continue
            if isinstance(data[0], list):
                tensor["shape"] = [len(data), 4]
            else:
                rows = max(1, len(data) // 4)
                tensor["data"] = (data * 4)[: rows * 4]
                tensor["shape"] = [rows, 4]
    return case
