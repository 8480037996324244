"""Open Inference Protocol conformance with the real clients: tritonclient HTTP and gRPC.

The API runs as in production: ``python -m ml_service serve`` with 2 uvicorn workers, a real
redis-server, and its gRPC listener (both workers on one port, SO_REUSEPORT). Expected
predictions come from the same signed model files, loaded here through the registry.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.grpc.aio as tgrpc_aio
import tritonclient.http as thttp
import tritonclient.http.aio as thttp_aio
from service_support import (
    LIMIT,
    LIMITED_PASSWORD,
    LIMITED_USERS,
    NewDeployment,
    RedisServer,
    Server,
    free_port,
    limited_overrides,
    running,
)
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from ml_service.model import LoadedModel, ModelRegistry

PREFIX = "oip"
ROWS = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3], [5.9, 3.0, 4.2, 1.5]])
MAX_BATCH = 256


# ----- fixtures -----


@pytest.fixture(scope="module")
def oip(new_deployment: NewDeployment) -> Iterator[Server]:
    d = new_deployment(
        "oip",
        {
            "ML_SERVICE_KEY_PREFIX": PREFIX,
            "ML_SERVICE_USER_RATE_LIMITS": limited_overrides(),
            "ML_SERVICE_GRPC_PORT": str(free_port()),
        },
    )
    with running(d, timeout=120) as srv:  # a loaded 2-core machine starts two workers slowly
        yield srv


@pytest.fixture(scope="module")
def grpc_port(oip: Server) -> int:
    port = int(oip.deployment.extra_env["ML_SERVICE_GRPC_PORT"])
    deadline = time.monotonic() + 60
    while _listeners(port) < 2:  # each worker binds it once its lifespan started
        assert time.monotonic() < deadline, f"fewer than 2 gRPC listeners on {port}"
        time.sleep(0.1)
    return port


@pytest.fixture(scope="module")
def registry(oip: Server) -> ModelRegistry:
    reg = ModelRegistry(oip.deployment.model_dir, "iris", oip.deployment.trusted_keys_dir)
    reg.load()
    return reg


@pytest.fixture(scope="module")
def versions(registry: ModelRegistry) -> list[str]:
    """Active first (the newest: no activation happened), then the older one."""
    listed = [v.version for v in registry.versions()]
    assert registry.active is not None and listed[0] == registry.active.version
    return listed


@pytest.fixture(scope="module")
def toks(oip: Server) -> dict[str, str]:
    out = {
        "predictor": oip.token("paul-predictor"),
        "viewer": oip.token("vera-viewer"),
        "admin": oip.token("alice-admin"),
    }
    for user in LIMITED_USERS:
        out[user] = oip.token(user, LIMITED_PASSWORD)
    return out


@pytest.fixture
def http(oip: Server) -> Iterator[thttp.InferenceServerClient]:
    client = thttp.InferenceServerClient(oip.url.removeprefix("http://"))
    yield client
    client.close()


@pytest.fixture
def grpc_client(grpc_port: int) -> Iterator[tgrpc.InferenceServerClient]:
    client = tgrpc.InferenceServerClient(f"127.0.0.1:{grpc_port}")
    yield client
    client.close()


# ----- helpers -----


def _listeners(port: int) -> int:
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                    count += 1
    return count


def hdr(token: str) -> dict[str, str]:
    # A fresh dict per call: tritonclient adds its own headers to the dict it is given.
    return {"Authorization": f"Bearer {token}"}


def meta(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}  # gRPC metadata keys are lower case


def expected(model: LoadedModel, X: np.ndarray) -> np.ndarray:
    return model.predict_proba(np.asarray(X, dtype=np.float64))


def http_input(X: np.ndarray, datatype: str, binary: bool) -> thttp.InferInput:
    arr = X.astype(np.float32 if datatype == "FP32" else np.float64)
    tensor = thttp.InferInput("features", list(arr.shape), datatype)
    tensor.set_data_from_numpy(arr, binary_data=binary)
    return tensor


def grpc_input(X: np.ndarray, datatype: str) -> tgrpc.InferInput:
    arr = X.astype(np.float32 if datatype == "FP32" else np.float64)
    tensor = tgrpc.InferInput("features", list(arr.shape), datatype)
    tensor.set_data_from_numpy(arr)
    return tensor


def raw_input(shape: list[int], datatype: str, raw: bytes) -> tgrpc.InferInput:
    """An input whose bytes the client does not check against the datatype (bad requests)."""
    tensor = tgrpc.InferInput("features", shape, datatype)
    tensor._raw_content = raw  # tritonclient's own slot for the raw bytes it sends
    return tensor


def reset_limit(redis: RedisServer, user: str) -> None:
    redis.cli("DEL", f"{PREFIX}:rl:{user}:predict")


def audit_records(server: Server) -> list[dict[str, Any]]:
    lines = server.deployment.audit_log.read_text().splitlines()
    return [json.loads(line) for line in lines]


def wait_for_audit(server: Server, request_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for record in audit_records(server):
            if record["request_id"] == request_id:
                return record
        time.sleep(0.05)
    raise AssertionError(f"no audit record for {request_id}")


# ----- REST (tritonclient.http) -----


def test_http_health_and_model_ready(
    http: thttp.InferenceServerClient, toks: dict[str, str], versions: list[str]
) -> None:
    h = toks["viewer"]
    assert http.is_server_live(headers=hdr(h))
    assert http.is_server_ready(headers=hdr(h))
    assert http.is_model_ready("iris", headers=hdr(h))
    for version in versions:
        assert http.is_model_ready("iris", model_version=version, headers=hdr(h))
    assert not http.is_model_ready("iris", model_version="20000101T000000Z", headers=hdr(h))
    assert not http.is_model_ready("other", headers=hdr(h))
    assert not http.is_model_ready("iris")  # no token


def test_http_server_and_model_metadata(
    http: thttp.InferenceServerClient, toks: dict[str, str], versions: list[str]
) -> None:
    h = toks["viewer"]
    server = http.get_server_metadata(headers=hdr(h))
    assert server["name"] == "ml-api" and "binary_tensor_data" in server["extensions"]
    md = http.get_model_metadata("iris", headers=hdr(h))
    assert md["name"] == "iris" and md["versions"] == versions
    assert md["inputs"] == [{"name": "features", "datatype": "FP64", "shape": [-1, 4]}]
    assert {o["name"]: o["shape"] for o in md["outputs"]} == {
        "probabilities": [-1, 3],
        "predicted_class": [-1],
    }
    older = http.get_model_metadata("iris", model_version=versions[1], headers=hdr(h))
    assert older["versions"] == [versions[1]]
    with pytest.raises(InferenceServerException) as exc:
        http.get_model_metadata("iris", model_version="nope", headers=hdr(h))
    assert exc.value.status() == "404" and "no version 'nope'" in str(exc.value)


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_http_infer(
    http: thttp.InferenceServerClient,
    toks: dict[str, str],
    registry: ModelRegistry,
    datatype: str,
    binary: bool,
) -> None:
    result = http.infer(
        "iris",
        [http_input(ROWS, datatype, binary)],
        headers=hdr(toks["predictor"]),
        request_id=f"http-{datatype}-{binary}",
    )
    assert registry.active is not None
    X = ROWS.astype(np.float32).astype(np.float64) if datatype == "FP32" else ROWS
    want = expected(registry.active, X)
    np.testing.assert_allclose(result.as_numpy("probabilities"), want, rtol=1e-12)
    assert result.as_numpy("predicted_class").tolist() == want.argmax(axis=1).tolist()
    response = result.get_response()
    assert response["id"] == f"http-{datatype}-{binary}"
    assert response["model_version"] == registry.active.version
    # No outputs named: tritonclient asks for binary_data_output, and gets binary outputs.
    assert all("binary_data_size" in o["parameters"] for o in response["outputs"])


def test_http_requested_outputs_json_and_binary(
    http: thttp.InferenceServerClient, toks: dict[str, str], registry: ModelRegistry
) -> None:
    assert registry.active is not None
    want = expected(registry.active, ROWS)
    only = http.infer(
        "iris",
        [http_input(ROWS, "FP64", False)],
        outputs=[thttp.InferRequestedOutput("predicted_class", binary_data=False)],
        headers=hdr(toks["predictor"]),
    )
    response = only.get_response()
    assert [o["name"] for o in response["outputs"]] == ["predicted_class"]
    assert response["outputs"][0]["data"] == want.argmax(axis=1).tolist()
    assert only.as_numpy("probabilities") is None
    mixed = http.infer(
        "iris",
        [http_input(ROWS, "FP64", True)],
        outputs=[
            thttp.InferRequestedOutput("probabilities", binary_data=True),
            thttp.InferRequestedOutput("predicted_class", binary_data=False),
        ],
        headers=hdr(toks["predictor"]),
    )
    by_name = {o["name"]: o for o in mixed.get_response()["outputs"]}
    assert by_name["probabilities"]["parameters"] == {"binary_data_size": want.size * 8}
    assert "data" in by_name["predicted_class"]
    np.testing.assert_allclose(mixed.as_numpy("probabilities"), want, rtol=1e-12)
    with pytest.raises(InferenceServerException) as exc:
        http.infer(
            "iris",
            [http_input(ROWS, "FP64", False)],
            outputs=[thttp.InferRequestedOutput("logits")],
            headers=hdr(toks["predictor"]),
        )
    assert exc.value.status() == "422" and "predicted_class" in str(exc.value)
    with pytest.raises(InferenceServerException) as exc:
        http.infer(
            "iris",
            [http_input(ROWS, "FP64", False)],
            outputs=[thttp.InferRequestedOutput("probabilities", class_count=2)],
            headers=hdr(toks["predictor"]),
        )
    assert exc.value.status() == "422" and "classification" in str(exc.value)


def test_http_batch_and_its_bound(
    http: thttp.InferenceServerClient, toks: dict[str, str], registry: ModelRegistry
) -> None:
    rng = np.random.default_rng(7)
    X = rng.uniform(0.1, 8.0, size=(MAX_BATCH, 4))
    result = http.infer("iris", [http_input(X, "FP64", True)], headers=hdr(toks["predictor"]))
    assert registry.active is not None
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected(registry.active, X))
    too_many = np.vstack([X, X[:1]])
    with pytest.raises(InferenceServerException) as exc:
        http.infer("iris", [http_input(too_many, "FP64", True)], headers=hdr(toks["predictor"]))
    assert exc.value.status() == "422" and "256" in str(exc.value)


def test_http_infer_with_an_older_verified_version(
    http: thttp.InferenceServerClient,
    toks: dict[str, str],
    registry: ModelRegistry,
    versions: list[str],
) -> None:
    older = versions[1]
    result = http.infer(
        "iris",
        [http_input(ROWS, "FP64", True)],
        model_version=older,
        headers=hdr(toks["predictor"]),
    )
    assert result.get_response()["model_version"] == older
    want = expected(registry.build_version(older), ROWS)
    np.testing.assert_allclose(result.as_numpy("probabilities"), want, rtol=1e-12)
    # Serving an older version does not activate it.
    assert (
        http.get_model_metadata("iris", headers=hdr(toks["viewer"]))["versions"][0] == (versions[0])
    )


@pytest.mark.parametrize(
    ("X", "datatype", "binary", "needle"),
    [
        (np.ones((2, 3)), "FP64", False, "shape"),
        (np.ones((2, 3)), "FP64", True, "shape"),
        (np.ones((2, 4), dtype=np.int32), "INT32", False, "datatype"),
        (np.ones((2, 4), dtype=np.int32), "INT32", True, "datatype"),
        (np.full((1, 4), 99.0), "FP64", True, "range"),
    ],
    ids=["shape-json", "shape-binary", "dtype-json", "dtype-binary", "range-binary"],
)
def test_http_bad_input_is_a_readable_4xx(
    http: thttp.InferenceServerClient,
    toks: dict[str, str],
    X: np.ndarray,
    datatype: str,
    binary: bool,
    needle: str,
) -> None:
    tensor = thttp.InferInput("features", list(X.shape), datatype)
    tensor.set_data_from_numpy(X, binary_data=binary)
    with pytest.raises(InferenceServerException) as exc:
        http.infer("iris", [tensor], headers=hdr(toks["predictor"]))
    assert exc.value.status() == "422"
    assert needle in str(exc.value), str(exc.value)  # str() works: the message is a string


def test_http_security(
    http: thttp.InferenceServerClient, toks: dict[str, str], redis_server: RedisServer
) -> None:
    tensor = [http_input(ROWS, "FP64", True)]
    with pytest.raises(InferenceServerException) as exc:
        http.infer("iris", tensor)
    assert exc.value.status() == "401" and "token" in str(exc.value)
    with pytest.raises(InferenceServerException) as exc:
        http.infer("iris", tensor, headers=hdr(toks["viewer"]))
    assert exc.value.status() == "403" and "predict" in str(exc.value)
    user = LIMITED_USERS[0]
    reset_limit(redis_server, user)
    for _ in range(LIMIT):
        http.infer("iris", tensor, headers=hdr(toks[user]))
    with pytest.raises(InferenceServerException) as exc:
        http.infer("iris", tensor, headers=hdr(toks[user]))
    assert exc.value.status() == "429" and "retry after" in str(exc.value), str(exc.value)


def test_v2_error_bodies_are_the_protocols(oip: Server, toks: dict[str, str]) -> None:
    h = hdr(toks["predictor"])
    for method, path, kwargs in [
        ("GET", "/v2/models/other", {"headers": h}),
        ("GET", "/v2/models/iris/versions/nope/ready", {"headers": h}),
        ("GET", "/v2/unknown", {"headers": h}),
        ("GET", "/v2", {}),
        ("POST", "/v2/models/iris/infer", {"headers": h, "content": b"{"}),
        ("POST", "/v2/models/iris/infer", {"headers": h, "json": {"inputs": []}}),
        ("DELETE", "/v2/models/iris", {"headers": h}),
    ]:
        r = httpx.request(method, oip.url + path, timeout=10, **kwargs)
        assert 400 <= r.status_code < 500, (path, r.status_code)
        body = r.json()
        assert set(body) == {"error"} and isinstance(body["error"], str), (path, body)
    # The rest of the API keeps its own error format.
    r = httpx.get(oip.url + "/model/info", timeout=10)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"


def test_binary_framing_errors(oip: Server, toks: dict[str, str]) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "features",
                    "shape": [1, 4],
                    "datatype": "FP64",
                    "parameters": {"binary_data_size": 32},
                }
            ]
        }
    ).encode()
    raw = np.ones((1, 4)).tobytes()

    def post(body: bytes, length: int | str) -> httpx.Response:
        headers = {**hdr(toks["predictor"]), "Inference-Header-Content-Length": str(length)}
        return httpx.post(oip.url + "/v2/models/iris/infer", content=body, headers=headers)

    assert post(header + raw, len(header)).status_code == 200
    for body, length, needle in [
        (header + raw[:-1], len(header), "past the body's end"),
        (header + raw + b"x", len(header), "belong to no input"),
        (header + raw, len(header) + 500, "between 1 and"),
        (header + raw, "abc", "between 1 and"),
    ]:
        r = post(body, length)
        assert r.status_code == 400 and needle in r.json()["error"], r.text


def test_content_types(oip: Server, toks: dict[str, str]) -> None:
    body = {"inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP64", "data": [1] * 4}]}
    url = oip.url + "/v2/models/iris/infer"
    for content_type, status in [
        ("application/json", 200),
        ("application/octet-stream", 200),  # what aiohttp sends for an all-JSON body
        ("text/plain", 415),
    ]:
        headers = {**hdr(toks["predictor"]), "Content-Type": content_type}
        r = httpx.post(url, content=json.dumps(body), headers=headers, timeout=10)
        assert r.status_code == status, (content_type, r.text)


def test_asyncio_clients(
    oip: Server, grpc_port: int, toks: dict[str, str], registry: ModelRegistry
) -> None:
    """tritonclient's asyncio clients (aiohttp and grpc.aio) send differently framed requests."""
    assert registry.active is not None
    want = expected(registry.active, ROWS)

    async def run() -> list[np.ndarray]:
        http = thttp_aio.InferenceServerClient(oip.url.removeprefix("http://"))
        grpc_aio = tgrpc_aio.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        try:
            results = []
            for binary in (False, True):
                tensor = http_input(ROWS, "FP64", binary)
                outputs = [thttp_aio.InferRequestedOutput("probabilities", binary_data=binary)]
                r = await http.infer(
                    "iris", [tensor], outputs=outputs, headers=hdr(toks["predictor"])
                )
                results.append(r.as_numpy("probabilities"))
            r = await grpc_aio.infer(
                "iris", [grpc_input(ROWS, "FP64")], headers=meta(toks["predictor"])
            )
            results.append(r.as_numpy("probabilities"))
            return results
        finally:
            await http.close()
            await grpc_aio.close()

    for got in asyncio.run(run()):
        np.testing.assert_allclose(got, want, rtol=1e-12)


# ----- gRPC (tritonclient.grpc) -----


def test_grpc_health_ready_and_metadata(
    grpc_client: tgrpc.InferenceServerClient, toks: dict[str, str], versions: list[str]
) -> None:
    m = meta(toks["viewer"])
    assert grpc_client.is_server_live(headers=m)
    assert grpc_client.is_server_ready(headers=m)
    assert grpc_client.is_model_ready("iris", headers=m)
    assert grpc_client.is_model_ready("iris", model_version=versions[1], headers=m)
    server = grpc_client.get_server_metadata(headers=m, as_json=True)
    assert server["name"] == "ml-api" and server["extensions"] == ["binary_tensor_data"]
    md = grpc_client.get_model_metadata("iris", headers=m, as_json=True)
    assert md["versions"] == versions and md["platform"] == "scikit-learn"
    assert md["inputs"] == [{"name": "features", "datatype": "FP64", "shape": ["-1", "4"]}]
    with pytest.raises(InferenceServerException) as exc:
        grpc_client.get_model_metadata("other", headers=m)
    assert exc.value.status() == "StatusCode.NOT_FOUND" and "other" in exc.value.message()


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_grpc_infer(
    grpc_client: tgrpc.InferenceServerClient,
    toks: dict[str, str],
    registry: ModelRegistry,
    datatype: str,
) -> None:
    result = grpc_client.infer(
        "iris", [grpc_input(ROWS, datatype)], headers=meta(toks["predictor"]), request_id="g-1"
    )
    assert registry.active is not None
    X = ROWS.astype(np.float32).astype(np.float64) if datatype == "FP32" else ROWS
    want = expected(registry.active, X)
    np.testing.assert_allclose(result.as_numpy("probabilities"), want, rtol=1e-12)
    assert result.as_numpy("predicted_class").tolist() == want.argmax(axis=1).tolist()
    response = result.get_response()
    assert response.id == "g-1" and response.model_version == registry.active.version


def test_grpc_requested_outputs_batch_and_version(
    grpc_client: tgrpc.InferenceServerClient,
    toks: dict[str, str],
    registry: ModelRegistry,
    versions: list[str],
) -> None:
    m = meta(toks["predictor"])
    only = grpc_client.infer(
        "iris",
        [grpc_input(ROWS, "FP64")],
        outputs=[tgrpc.InferRequestedOutput("predicted_class")],
        headers=m,
    )
    assert [o.name for o in only.get_response().outputs] == ["predicted_class"]
    assert only.as_numpy("probabilities") is None
    with pytest.raises(InferenceServerException) as exc:
        grpc_client.infer(
            "iris",
            [grpc_input(ROWS, "FP64")],
            outputs=[tgrpc.InferRequestedOutput("probabilities", class_count=2)],
            headers=m,
        )
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "classification" in exc.value.message()
    X = np.random.default_rng(3).uniform(0.1, 8.0, size=(MAX_BATCH, 4))
    batch = grpc_client.infer("iris", [grpc_input(X, "FP64")], headers=m, model_version=versions[1])
    assert batch.get_response().model_version == versions[1]
    want = expected(registry.build_version(versions[1]), X)
    np.testing.assert_allclose(batch.as_numpy("probabilities"), want, rtol=1e-12)


@pytest.mark.parametrize(
    ("tensor", "needle"),
    [
        (lambda: grpc_input(np.ones((2, 3)), "FP64"), "shape"),
        (lambda: raw_input([2, 4], "INT32", np.ones((2, 4), np.int32).tobytes()), "datatype"),
        (lambda: raw_input([2, 4], "FP64", np.ones((2, 4)).tobytes()[:-8]), "bytes"),
    ],
    ids=["shape", "datatype", "short-raw"],
)
def test_grpc_bad_input_is_invalid_argument(
    grpc_client: tgrpc.InferenceServerClient, toks: dict[str, str], tensor: Any, needle: str
) -> None:
    with pytest.raises(InferenceServerException) as exc:
        grpc_client.infer("iris", [tensor()], headers=meta(toks["predictor"]))
    assert exc.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert needle in exc.value.message(), exc.value.message()


def test_grpc_security(
    grpc_client: tgrpc.InferenceServerClient,
    grpc_port: int,
    toks: dict[str, str],
    redis_server: RedisServer,
) -> None:
    tensor = [grpc_input(ROWS, "FP64")]
    with pytest.raises(InferenceServerException) as exc:
        grpc_client.infer("iris", tensor)
    assert exc.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as exc:
        grpc_client.get_model_metadata("iris", headers={"authorization": "Bearer not-a-jwt"})
    assert exc.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as exc:
        grpc_client.infer("iris", tensor, headers=meta(toks["viewer"]))
    assert exc.value.status() == "StatusCode.PERMISSION_DENIED"
    assert "predict" in exc.value.message()
    user = LIMITED_USERS[1]
    reset_limit(redis_server, user)
    for _ in range(LIMIT):
        grpc_client.infer("iris", tensor, headers=meta(toks[user]))
    with pytest.raises(InferenceServerException) as exc:
        grpc_client.infer("iris", tensor, headers=meta(toks[user]))
    assert exc.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
    assert "retry after" in exc.value.message()
    # The machine-readable hint is in the trailing metadata (read with plain grpc).
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="iris")
        with pytest.raises(grpc.RpcError) as rpc:
            stub.ModelInfer(request, metadata=tuple(meta(toks[user]).items()), timeout=10)
    trailing = dict(rpc.value.trailing_metadata())
    assert rpc.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert int(trailing["retry-after"]) >= 1
    assert int(trailing["grpc-retry-pushback-ms"]) == int(trailing["retry-after"]) * 1000
    assert trailing["ratelimit-remaining"] == "0"


def test_grpc_typed_contents_in_and_out(
    grpc_port: int, toks: dict[str, str], registry: ModelRegistry
) -> None:
    """Clients that send typed contents (not raw bytes) get typed contents back."""
    request = service_pb2.ModelInferRequest(model_name="iris", id="typed")
    tensor = request.inputs.add(name="features", datatype="FP64", shape=list(ROWS.shape))
    tensor.contents.fp64_contents.extend(ROWS.ravel().tolist())
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        reply = stub.ModelInfer(request, metadata=tuple(meta(toks["predictor"]).items()))
        bad = service_pb2.ModelInferRequest(model_name="iris")
        t = bad.inputs.add(name="features", datatype="FP64", shape=[1, 4])
        t.contents.fp32_contents.extend([1.0] * 4)
        with pytest.raises(grpc.RpcError) as rpc:
            stub.ModelInfer(bad, metadata=tuple(meta(toks["predictor"]).items()))
    assert not reply.raw_output_contents
    out = {o.name: o for o in reply.outputs}
    assert registry.active is not None
    want = expected(registry.active, ROWS)
    np.testing.assert_allclose(
        np.array(out["probabilities"].contents.fp64_contents).reshape(want.shape), want
    )
    assert list(out["predicted_class"].contents.int64_contents) == want.argmax(axis=1).tolist()
    assert rpc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "fp64_contents" in (rpc.value.details() or "")


def test_grpc_calls_are_audited_and_counted(
    oip: Server, grpc_port: int, toks: dict[str, str]
) -> None:
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        request = service_pb2.ModelInferRequest(model_name="iris")
        request.inputs.add(name="features", datatype="FP64", shape=[1, 4])
        request.raw_input_contents.append(ROWS[:1].tobytes())
        _, call = stub.ModelInfer.with_call(
            request, metadata=tuple(meta(toks["predictor"]).items())
        )
        ok_id = dict(call.trailing_metadata())["x-request-id"]
        with pytest.raises(grpc.RpcError) as denied:
            stub.ModelInfer(request, metadata=tuple(meta(toks["viewer"]).items()))
    denied_id = dict(denied.value.trailing_metadata())["x-request-id"]
    record = wait_for_audit(oip, denied_id)
    assert record["user"] == "vera-viewer" and record["outcome"] == "denied"
    assert record["status"] == 403 and record["method"] == "GRPC"
    assert record["route"] == "/inference.GRPCInferenceService/ModelInfer"
    record = wait_for_audit(oip, ok_id)
    assert record["user"] == "paul-predictor" and record["action"] == "predict"
    assert record["outcome"] == "success" and record["model_version"]
    assert record["client_ip"] == "127.0.0.1"
    r = httpx.get(oip.url + "/metrics", headers=hdr(toks["admin"]), timeout=10)
    assert (
        'ml_api_requests_total{method="GRPC",'
        'route="/inference.GRPCInferenceService/ModelInfer",status="403"}'
    ) in r.text


def test_openapi_documents_every_v2_route(oip: Server) -> None:
    """schemathesis (test_schemathesis.py) runs against this document: the routes must be in it."""
    doc = httpx.get(oip.url + "/openapi.json", timeout=10).json()
    paths = doc["paths"]
    for path in (
        "/v2",
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/{name}",
        "/v2/models/{name}/versions/{version}",
        "/v2/models/{name}/ready",
        "/v2/models/{name}/versions/{version}/ready",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    ):
        assert path in paths, path
    infer = paths["/v2/models/{name}/infer"]["post"]
    schema = infer["requestBody"]["content"]["application/json"]["schema"]
    assert "data" in schema["properties"]["inputs"]["items"]["required"]
    assert infer["responses"]["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/OipError"
    }
