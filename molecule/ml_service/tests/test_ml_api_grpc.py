"""The deployed API's gRPC listener (Open Inference Protocol): every worker, same security.

The calls run inside the API's container with the image's own grpcio and stubs: the port is
not published (Traefik reaches it on the backend network; the appliance scenario goes
through Traefik).
"""

from __future__ import annotations

import json
import shlex

from test_ml_api import as_user, token

# Runs inside the container: ServerLive, then ModelInfer with the given token (may be empty).
CLIENT = r"""
import json, sys
import grpc
from ml_service.oip.proto import open_inference_grpc_pb2 as pb
from ml_service.oip.proto import open_inference_grpc_pb2_grpc as pb_grpc
import numpy as np
req = json.loads(sys.stdin.read())
out = {}
with grpc.insecure_channel("127.0.0.1:8001") as channel:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    out["live"] = stub.ServerLive(pb.ServerLiveRequest(), timeout=10).live
    call = pb.ModelInferRequest(model_name="iris", id="molecule")
    call.inputs.add(name="features", datatype="FP64", shape=[1, 4])
    call.raw_input_contents.append(np.array([[5.1, 3.5, 1.4, 0.2]]).tobytes())
    metadata = (("authorization", "Bearer " + req["token"]),) if req["token"] else ()
    try:
        reply = stub.ModelInfer(call, metadata=metadata, timeout=10)
        out["code"] = "OK"
        out["id"] = reply.id
        out["version"] = reply.model_version
        out["probabilities"] = np.frombuffer(reply.raw_output_contents[0]).tolist()
    except grpc.RpcError as exc:
        out["code"] = exc.code().name
out["listeners"] = sum(
    1
    for table in ("/proc/net/tcp", "/proc/net/tcp6")
    for line in open(table).readlines()[1:]
    if line.split()[3] == "0A" and line.split()[1].endswith(":1F41")
)
print(json.dumps(out))
"""


def grpc_call(host, tok: str) -> dict:
    payload = json.dumps({"token": tok})
    cmd = f"podman exec -i ml-api python -c {shlex.quote(CLIENT)} <<'EOF'\n{payload}\nEOF"
    result = as_user(host, cmd)
    assert result.rc == 0, result.stderr
    return json.loads(result.stdout)


def test_grpc_infer_with_a_token(host):
    out = grpc_call(host, token(host, "admin"))
    assert out["live"] is True
    assert out["code"] == "OK" and out["id"] == "molecule" and out["version"]
    assert len(out["probabilities"]) == 3 and abs(sum(out["probabilities"]) - 1) < 1e-9
    # Both uvicorn workers (the role's default) serve the port (SO_REUSEPORT).
    assert out["listeners"] == 2


def test_grpc_refuses_a_call_without_a_token(host):
    out = grpc_call(host, "")
    assert out["code"] == "UNAUTHENTICATED"
