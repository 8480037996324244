"""An unexpected exception: JSON 500 with the request id, no stack trace; a JSON error log
line with severity and the same request id; an audit record with outcome 'error'."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import httpx
from service_support import Deployment

from ml_service.app import create_app
from ml_service.logs import JsonFormatter
from ml_service.settings import load_settings


def test_unexpected_exception(deployment: Deployment) -> None:
    app = create_app(load_settings(deployment.env()))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret detail /etc/shadow")

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logging.getLogger().addHandler(handler)

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 4242))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/boom")

    try:
        r = asyncio.run(call())
    finally:
        logging.getLogger().removeHandler(handler)
    assert r.status_code == 500
    body = r.json()
    assert body == {
        "error": {
            "code": "internal_error",
            "message": "internal error",
            "request_id": r.headers["x-request-id"],
        }
    }
    assert "secret detail" not in r.text and "Traceback" not in r.text
    logs = [json.loads(line) for line in stream.getvalue().splitlines()]
    errors = [x for x in logs if x["severity"] == "ERROR"]
    assert errors and errors[0]["request_id"] == r.headers["x-request-id"]
    assert errors[0]["exception"] == "RuntimeError" and "traceback" not in errors[0]
    records = [json.loads(x) for x in deployment.audit_log.read_text().splitlines()]
    rec = next(x for x in records if x["request_id"] == r.headers["x-request-id"])
    assert rec["status"] == 500 and rec["outcome"] == "error"
