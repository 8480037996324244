"""Strict input validation, body limit, and the JSON error format."""

from __future__ import annotations

import json
import re
import socket

import httpx
import pytest
from service_support import ROW, Server, bearer
from workers import every_worker, fresh

BAD_BODIES = {
    "bool": '{"features": [5.1, 3.5, 1.4, true]}',
    "string_number": '{"features": [5.1, 3.5, 1.4, "0.2"]}',
    "null": '{"features": [5.1, 3.5, 1.4, null]}',
    "nan": '{"features": [5.1, 3.5, 1.4, NaN]}',
    "infinity": '{"features": [5.1, 3.5, 1.4, Infinity]}',
    "neg_infinity": '{"features": [-Infinity, 3.5, 1.4, 0.2]}',
    "huge_exponent": '{"features": [1e999, 3.5, 1.4, 0.2]}',
    "three_numbers": '{"features": [5.1, 3.5, 1.4]}',
    "five_numbers": '{"features": [5.1, 3.5, 1.4, 0.2, 1.0]}',
    "nested": '{"features": [[5.1, 3.5, 1.4, 0.2]]}',
    "object": '{"features": {"a": 1}}',
    "extra_field": '{"features": [5.1, 3.5, 1.4, 0.2], "debug": true}',
    "both_forms": '{"features": [5.1, 3.5, 1.4, 0.2], "instances": [[5.1, 3.5, 1.4, 0.2]]}',
    "out_of_range_high": '{"features": [5.1, 3.5, 1.4, 31]}',
    "out_of_range_negative": '{"features": [-0.1, 3.5, 1.4, 0.2]}',
    "empty_batch": '{"instances": []}',
    "batch_row_too_short": '{"instances": [[5.1, 3.5, 1.4, 0.2], [1, 2, 3]]}',
    "batch_too_large": '{"instances": [' + ",".join(["[5.1, 3.5, 1.4, 0.2]"] * 257) + "]}",
    "empty_object": "{}",
    "array_top_level": "[5.1, 3.5, 1.4, 0.2]",
    "malformed_json": '{"features": [5.1, 3.5,',
    "not_json": "features=1,2,3,4",
}


@pytest.mark.parametrize("case", sorted(BAD_BODIES))
def test_bad_body_is_rejected_with_json_error(
    client: httpx.Client, tokens: dict[str, str], case: str
) -> None:
    r = client.post(
        "/predict",
        content=BAD_BODIES[case],
        headers={**bearer(tokens["predictor"]), "Content-Type": "application/json"},
    )
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert err["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text and 'File "' not in r.text


def test_valid_bodies(client: httpx.Client, tokens: dict[str, str]) -> None:
    h = bearer(tokens["predictor"])
    r = client.post(
        "/predict", json={"features": [5, 3, 1, 0]}, headers=h
    )  # integers are numbers too
    assert r.status_code == 200
    body = r.json()
    assert body["class_name"] in body["probabilities"]
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-9
    assert body["request_id"] == r.headers["x-request-id"]
    r = client.post("/predict", json={"instances": [ROW] * 256}, headers=h)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 256


def test_body_over_limit_is_413(client: httpx.Client, tokens: dict[str, str]) -> None:
    body = '{"features": [5.1, 3.5, 1.4, 0.2], "pad": "' + "x" * 70_000 + '"}'
    r = client.post(
        "/predict",
        content=body,
        headers={**bearer(tokens["predictor"]), "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"


def test_chunked_body_over_limit_is_413(server: Server, tokens: dict[str, str]) -> None:
    # No Content-Length: the limit must be enforced while reading.
    def chunks():  # type: ignore[no-untyped-def]
        yield b'{"features": [5.1, 3.5, 1.4, 0.2], "pad": "'
        for _ in range(20):
            yield b"x" * 8192
        yield b'"}'

    r = httpx.post(
        server.url + "/predict",
        content=chunks(),
        headers={**bearer(tokens["predictor"]), "Content-Type": "application/json"},
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["request_id"]


def test_v2_infer_validation(client: httpx.Client, tokens: dict[str, str]) -> None:
    h = bearer(tokens["predictor"])

    def infer(tensor: dict) -> httpx.Response:
        return client.post("/v2/models/iris/infer", json={"inputs": [tensor]}, headers=h)

    ok = {"name": "x", "shape": [2, 4], "datatype": "FP64", "data": ROW + ROW}
    r = infer(ok)
    assert r.status_code == 200
    out = {o["name"]: o for o in r.json()["outputs"]}
    assert out["probabilities"]["shape"] == [2, 3] and len(out["predicted_class"]["data"]) == 2
    assert infer({**ok, "data": [ROW, ROW]}).status_code == 200
    assert infer({**ok, "shape": [3, 4]}).status_code == 422  # disagrees with data
    assert infer({**ok, "data": [*ROW, 1.0]}).status_code == 422
    assert infer({**ok, "datatype": "BYTES"}).status_code == 422
    assert infer({**ok, "data": [*ROW[:3], True, *ROW]}).status_code == 422
    r = client.post("/v2/models/other/infer", json={"inputs": [ok]}, headers=h)
    assert r.status_code == 404


def test_unknown_route_and_method_are_json(client: httpx.Client) -> None:
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = client.delete("/predict")
    assert r.status_code == 405 and r.json()["error"]["request_id"]


def test_oversized_header_does_not_crash(server: Server) -> None:
    # A raw request with a 100 kB header: a 4xx with a JSON error, not a 500 nor a closed
    # connection (what a crashed worker leaves), and every worker still serves afterwards.
    with socket.create_connection(("127.0.0.1", server.port), timeout=15) as s:
        s.sendall(
            b"GET /model/info HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer "
            + b"a" * 100_000
            + b"\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0]
    assert re.fullmatch(rb"HTTP/1\.1 4\d\d [A-Za-z ]+", status), data[:300]
    assert json.loads(body)["error"]["code"], body
    every_worker(
        lambda: fresh("GET", server.url + "/health/ready"),
        server.workers,
        _is_ready,
    )


def _is_ready(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text


def test_ranges_and_batch_size_come_from_the_settings() -> None:
    from pydantic import ValidationError

    from ml_service.schemas import RequestModels
    from ml_service.settings import FeatureRange, Settings

    settings = Settings.model_construct(
        feature_ranges=[FeatureRange(min=0, max=1), FeatureRange(min=-5, max=5)] * 2, max_batch=2
    )
    models = RequestModels(settings)
    models.features_request.model_validate({"features": [0.5, -4, 1, 5]})
    for bad in ([1.5, 0, 0, 0], [0, -6, 0, 0], [0, 0, 0, 5.5]):
        with pytest.raises(ValidationError):
            models.features_request.model_validate({"features": bad})
    with pytest.raises(ValidationError):
        models.instances_request.model_validate({"instances": [[0, 0, 0, 0]] * 3})
    schema = models.features_request.model_json_schema()["properties"]["features"]["prefixItems"]
    assert [(s["minimum"], s["maximum"]) for s in schema] == [(0, 1), (-5, 5), (0, 1), (-5, 5)]
