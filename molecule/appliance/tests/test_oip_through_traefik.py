"""The Open Inference Protocol end to end through Traefik: one REST and one gRPC inference.

Both go to https://api.localhost on the appliance's port 443, TLS checked against the
appliance CA for the API's name: REST over HTTP/1.1, gRPC over HTTP/2 (Traefik passes it to
the API's h2c listener). The clients run on the appliance in a throw-away container of the
API's own image (it has grpcio and the stubs) sharing the host's network, so the requests
take the same path as a client's.
"""

from __future__ import annotations

import json
import shlex

from on_host import AS_SERVICE

# Runs in the container: a token, then v2 infer over REST and ModelInfer over gRPC.
CLIENT = r"""
import json, socket, ssl, sys, urllib.parse
import grpc
import numpy as np
from ml_service.oip.proto import open_inference_grpc_pb2 as pb
from ml_service.oip.proto import open_inference_grpc_pb2_grpc as pb_grpc

req = json.loads(sys.stdin.read())
ca = open("/ca.crt", "rb").read()
ctx = ssl.create_default_context(cadata=ca.decode())


def https(method, path, body, headers):
    with ctx.wrap_socket(socket.create_connection(("127.0.0.1", 443), timeout=10),
                         server_hostname="api.localhost") as tls:
        head = f"{method} {path} HTTP/1.1\r\nHost: api.localhost\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        head += f"Content-Length: {len(body)}\r\n\r\n"
        tls.sendall(head.encode() + body)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data.split(b"\r\n\r\n", 1)[1]


form = urllib.parse.urlencode({"username": "admin", "password": req["password"]}).encode()
status, body = https("POST", "/token", form, {"Content-Type": "application/x-www-form-urlencoded"})
assert status == 200, body
token = json.loads(body)["access_token"]
out = {}

infer = {"id": "e2e-rest", "inputs": [{"name": "features", "shape": [1, 4], "datatype": "FP64",
                                       "data": [5.1, 3.5, 1.4, 0.2]}]}
status, body = https("POST", "/v2/models/iris/infer", json.dumps(infer).encode(),
                     {"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
out["rest"] = {"status": status, "body": json.loads(body)}

options = [("grpc.ssl_target_name_override", "api.localhost"),
           ("grpc.default_authority", "api.localhost")]
creds = grpc.ssl_channel_credentials(root_certificates=ca)
with grpc.secure_channel("127.0.0.1:443", creds, options=options) as channel:
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    call = pb.ModelInferRequest(model_name="iris", id="e2e-grpc")
    call.inputs.add(name="features", datatype="FP64", shape=[1, 4])
    call.raw_input_contents.append(np.array([[5.1, 3.5, 1.4, 0.2]]).tobytes())
    reply = stub.ModelInfer(call, metadata=(("authorization", f"Bearer {token}"),), timeout=20)
    out["grpc"] = {
        "id": reply.id,
        "version": reply.model_version,
        "outputs": [o.name for o in reply.outputs],
        "probabilities": np.frombuffer(reply.raw_output_contents[0]).tolist(),
    }
    try:
        stub.ModelInfer(call, timeout=20)
        out["grpc_anonymous"] = "OK"
    except grpc.RpcError as exc:
        out["grpc_anonymous"] = exc.code().name
print(json.dumps(out))
"""


def test_rest_and_grpc_inference_through_traefik(host):
    password = host.check_output("cat /etc/appliance/secrets/ml-api-users/admin").strip()
    image = host.check_output(AS_SERVICE + "podman inspect ml-api --format '{{.ImageName}}'")
    cmd = (
        AS_SERVICE + "podman run --rm -i --network=host --read-only --cap-drop=all "
        "-v /etc/appliance/ca.crt:/ca.crt:ro --entrypoint python "
        f"{shlex.quote(image.strip())} -c {shlex.quote(CLIENT)}"
    )
    out = host.run(f"{cmd} <<'EOF'\n{json.dumps({'password': password})}\nEOF")
    assert out.rc == 0, out.stdout + out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    rest = result["rest"]
    assert rest["status"] == 200, rest
    assert rest["body"]["id"] == "e2e-rest" and rest["body"]["model_version"]
    probabilities = {o["name"]: o for o in rest["body"]["outputs"]}["probabilities"]["data"]
    grpc = result["grpc"]
    assert grpc["id"] == "e2e-grpc" and grpc["version"] == rest["body"]["model_version"]
    assert grpc["outputs"] == ["probabilities", "predicted_class"]
    # The same model answers both protocols with the same numbers.
    assert grpc["probabilities"] == probabilities
    assert result["grpc_anonymous"] == "UNAUTHENTICATED"
