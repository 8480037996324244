"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``).

A ``grpc.aio`` server runs in each API worker's event loop, started and stopped by the
application's lifespan, on ``ML_SERVICE_GRPC_PORT`` (plain HTTP/2: TLS ends at Traefik).
Every worker binds the same port with SO_REUSEPORT, so the kernel spreads connections over
the workers as it does for uvicorn's socket. One process, one set of service objects: the
same Redis connection, rate limiter, audit log, model registry and metrics files as REST.

Each call goes through the same security as a REST request: the bearer token from the
``authorization`` call metadata is checked by ``api.deps.require`` (the dependency the REST
routes use, given a minimal HTTP scope), so roles, rate limits and revocation are one
implementation. Errors map to gRPC status codes; a rate-limited call gets
RESOURCE_EXHAUSTED with ``retry-after`` (seconds) and ``grpc-retry-pushback-ms`` in the
trailing metadata. Every call is counted in ``ml_api_requests_total`` (method ``GRPC``,
route ``/inference.GRPCInferenceService/<Rpc>``, status as the HTTP equivalent) and writes
one audit record like a REST request.
"""

from __future__ import annotations

import ipaddress
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from grpc import aio
from starlette.requests import Request

from .. import metrics
from ..http_errors import ApiError
from ..logs import request_id_var
from ..middleware import RequestInfo, _outcome
from ..oip.handlers import OipHandler
from ..oip.proto import open_inference_grpc_pb2 as pb
from ..oip.proto import open_inference_grpc_pb2_grpc as pb_grpc
from ..oip.tensors import InferRequest, InferResult, InputTensor, RequestedOutput
from .deps import require

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ..services import Services
    from ..settings import Settings

log = logging.getLogger("ml_service.grpc")

SERVICE = "inference.GRPCInferenceService"
_STATUS_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.INVALID_ARGUMENT,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
# The audit actions of the REST routes that do the same.
_ACTIONS = {
    "ServerMetadata": "server.metadata",
    "ModelMetadata": "model.info",
    "ModelReady": "model.ready",
    "ModelInfer": "predict",
}
_READ = require("model:read", "read").dependency
_PREDICT = require("predict", "predict").dependency
_CONTENTS = {"FP32": "fp32_contents", "FP64": "fp64_contents"}

_MAX_CONNECTION_AGE_MS = 30_000
_MAX_CONNECTION_AGE_GRACE_MS = 10_000

Reply = TypeVar("Reply")
Guard = Callable[[Request], Awaitable[Any]] | None


def _peer_address(peer: str) -> str | None:
    # "ipv4:127.0.0.1:5000", "ipv6:[::1]:5000" (gRPC's URI forms of a TCP peer)
    kind, _, rest = peer.partition(":")
    if kind == "ipv4":
        return rest.rsplit(":", 1)[0]
    if kind == "ipv6":
        return rest.rsplit(":", 1)[0].strip("[]")
    return None


def _host_of(hop: str) -> str:
    """The host of one X-Forwarded-For entry: a bare address, ``1.2.3.4:port`` or
    ``[v6]:port``; anything else as it is (nothing is normalised into trust)."""
    if hop.startswith("["):
        end = hop.find("]")
        if end == -1:
            return hop
        rest = hop[end + 1 :]
        return hop[1:end] if not rest or rest.startswith(":") else hop
    if hop.count(":") == 1:
        host, port = hop.rsplit(":", 1)
        try:
            int(port)
        except ValueError:
            return hop
        return host
    return hop


class _Proxies:
    """Whose ``x-forwarded-for`` is believed and which hop is the client: the rule uvicorn
    applies to ``forwarded_allow_ips`` for HTTP (``uvicorn.middleware.proxy_headers`` of the
    pinned uvicorn), so both listeners see the same client address. Entries are addresses,
    CIDR networks (``10.89.3.0/24``; an address with host bits set before the ``/`` is no
    network and matches nothing, as in uvicorn) or ``*`` alone for every peer."""

    def __init__(self, allowed: str) -> None:
        self.everyone = allowed.strip() == "*"
        self.hosts: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = set()
        self.networks: set[ipaddress.IPv4Network | ipaddress.IPv6Network] = set()
        self.literals: set[str] = set()
        if self.everyone:
            return
        for item in (a.strip() for a in allowed.split(",")):
            try:
                if "/" in item:
                    self.networks.add(ipaddress.ip_network(item))
                else:
                    self.hosts.add(ipaddress.ip_address(item))
            except ValueError:
                self.literals.add(item)

    def trusted(self, address: str | None) -> bool:
        if self.everyone:
            return True
        if not address:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return address in self.literals
        return ip in self.hosts or any(ip in net for net in self.networks)

    def client(self, peer: str | None, forwarded: str | None) -> str | None:
        if not forwarded or not self.trusted(peer):
            return peer
        hops = [h.strip() for h in forwarded.split(",")]
        if self.everyone:
            return _host_of(hops[0]) or peer
        # Each proxy appends its peer: the nearest hop that is not a trusted proxy is the
        # client; when every hop is trusted, the first one.
        for hop in reversed(hops):
            host = _host_of(hop)
            if not self.trusted(host):
                return host or peer
        return _host_of(hops[0]) or peer


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, app: FastAPI, services: Services, handler: OipHandler) -> None:
        self.app = app
        self.audit = services.audit
        self.handler = handler
        self.proxies = _Proxies(services.settings.forwarded_allow_ips)

    # ----- the security wrapper every call goes through -----

    async def _call(
        self,
        rpc: str,
        context: aio.ServicerContext,
        guard: Guard,
        work: Callable[[RequestInfo], Awaitable[Reply]],
    ) -> Reply:
        started = time.perf_counter()
        info = RequestInfo(uuid.uuid4().hex)
        token = request_id_var.set(info.request_id)
        route = f"/{SERVICE}/{rpc}"
        pairs = [(k, v) for k, v in context.invocation_metadata() or () if isinstance(v, str)]
        metadata = dict(pairs)
        # Every x-forwarded-for entry, in order (uvicorn joins repeated headers the same way).
        forwarded = ", ".join(v for k, v in pairs if k == "x-forwarded-for")
        client = self.proxies.client(_peer_address(context.peer()), forwarded)
        status = 500
        try:
            if guard is not None:
                await guard(self._http_request(route, metadata, info, client))
            reply = await work(info)
            status = 200
            context.set_trailing_metadata(
                (*self._ratelimit_metadata(info), ("x-request-id", info.request_id))
            )
            return reply
        except ApiError as exc:
            status = exc.status
            await self._abort(context, exc, info)
            raise  # not reached: abort raises
        except Exception as exc:
            if isinstance(exc, aio.AbortError):
                raise
            log.error("unhandled %s in %s", exc.__class__.__name__, rpc, exc_info=exc)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise
        finally:
            elapsed = time.perf_counter() - started
            metrics.observe_request(route, "GRPC", status, elapsed)
            self._audit(rpc, route, info, client, status, elapsed)
            request_id_var.reset(token)

    def _http_request(
        self, route: str, metadata: dict[str, str], info: RequestInfo, client: str | None
    ) -> Request:
        headers = []
        authorization = metadata.get("authorization")
        if authorization is not None:
            headers.append((b"authorization", authorization.encode("utf-8", "replace")))
        scope = {
            "type": "http",
            "app": self.app,
            "method": "POST",
            "path": route,
            "query_string": b"",
            "headers": headers,
            "client": (client, 0) if client else None,
            "ml": info,
        }
        return Request(scope)

    @staticmethod
    def _ratelimit_metadata(info: RequestInfo) -> tuple[tuple[str, str], ...]:
        if info.ratelimit is None:
            return ()
        limit, remaining, reset, period = info.ratelimit
        return (
            ("ratelimit-limit", str(limit)),
            ("ratelimit-remaining", str(remaining)),
            ("ratelimit-reset", str(reset)),
            ("ratelimit-policy", f"{limit};w={int(period)}"),
        )

    async def _abort(self, context: aio.ServicerContext, exc: ApiError, info: RequestInfo) -> None:
        trailing = [*self._ratelimit_metadata(info), ("x-request-id", info.request_id)]
        message = exc.message
        retry = exc.headers.get("Retry-After")
        if retry is not None:
            trailing += [("retry-after", retry), ("grpc-retry-pushback-ms", str(int(retry) * 1000))]
            message = f"{message}; retry after {retry} s"
        context.set_trailing_metadata(tuple(trailing))
        await context.abort(_STATUS_CODES.get(exc.status, grpc.StatusCode.INTERNAL), message)

    def _audit(
        self,
        rpc: str,
        route: str,
        info: RequestInfo,
        client: str | None,
        status: int,
        elapsed: float,
    ) -> None:
        if rpc in ("ServerLive", "ServerReady"):
            return  # probes, like /v2/health/* over REST: counted, not audited one by one
        record: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "request_id": info.request_id,
            "user": info.user,
            "role": info.role,
            "client_ip": client,
            "method": "GRPC",
            "route": route,
            "action": _ACTIONS.get(rpc, "grpc"),
            "outcome": _outcome(status),
            "status": status,
            "model_version": info.model_version,
            "latency_ms": round(elapsed * 1000, 3),
            "detail": info.detail,
        }
        try:
            self.audit.write(record)
        except OSError as exc:
            log.error("audit log write failed: %s", exc.strerror)

    # ----- the RPCs -----

    async def ServerLive(self, request: Any, context: aio.ServicerContext) -> Any:
        async def work(_: RequestInfo) -> Any:
            return pb.ServerLiveResponse(live=self.handler.live())

        return await self._call("ServerLive", context, None, work)

    async def ServerReady(self, request: Any, context: aio.ServicerContext) -> Any:
        async def work(_: RequestInfo) -> Any:
            return pb.ServerReadyResponse(ready=self.handler.ready())

        return await self._call("ServerReady", context, None, work)

    async def ServerMetadata(self, request: Any, context: aio.ServicerContext) -> Any:
        async def work(_: RequestInfo) -> Any:
            return pb.ServerMetadataResponse(**self.handler.server_metadata())

        return await self._call("ServerMetadata", context, _READ, work)

    async def ModelReady(self, request: Any, context: aio.ServicerContext) -> Any:
        async def work(_: RequestInfo) -> Any:
            ready = await self.handler.model_ready(request.name, request.version or None)
            return pb.ModelReadyResponse(ready=ready)

        return await self._call("ModelReady", context, _READ, work)

    async def ModelMetadata(self, request: Any, context: aio.ServicerContext) -> Any:
        async def work(_: RequestInfo) -> Any:
            md = await self.handler.model_metadata(request.name, request.version or None)
            tensor = pb.ModelMetadataResponse.TensorMetadata
            return pb.ModelMetadataResponse(
                name=md["name"],
                versions=md["versions"],
                platform=md["platform"],
                inputs=[tensor(**t) for t in md["inputs"]],
                outputs=[tensor(**t) for t in md["outputs"]],
            )

        return await self._call("ModelMetadata", context, _READ, work)

    async def ModelInfer(self, request: Any, context: aio.ServicerContext) -> Any:
        async def work(info: RequestInfo) -> Any:
            call = _infer_request(request)
            result = await self.handler.infer(
                request.model_name, request.model_version or None, call, info
            )
            return _infer_response(result, raw=bool(request.raw_input_contents))

        return await self._call("ModelInfer", context, _PREDICT, work)


def _infer_request(msg: Any) -> InferRequest:
    raw = list(msg.raw_input_contents)
    if raw and len(raw) != len(msg.inputs):
        raise ApiError(422, f"{len(raw)} raw_input_contents for {len(msg.inputs)} inputs")
    inputs = []
    for i, tensor in enumerate(msg.inputs):
        if raw:
            inputs.append(InputTensor(tensor.name, tensor.datatype, list(tensor.shape), raw=raw[i]))
            continue
        field = _CONTENTS.get(tensor.datatype)
        data = list(getattr(tensor.contents, field)) if field else None
        if field and not data and tensor.HasField("contents"):
            raise ApiError(
                422, f"input '{tensor.name}' is {tensor.datatype}: its values go in {field}"
            )
        inputs.append(InputTensor(tensor.name, tensor.datatype, list(tensor.shape), data=data))
    # gRPC has no JSON form: every output is raw or typed contents, as the inputs were.
    outputs = [
        RequestedOutput(o.name, classification="classification" in o.parameters)
        for o in msg.outputs
    ] or None
    return InferRequest(inputs, outputs, msg.id or None)


def _infer_response(result: InferResult, raw: bool) -> Any:
    reply = pb.ModelInferResponse(
        model_name=result.model_name, model_version=result.model_version, id=result.id
    )
    reply.parameters["request_id"].string_param = result.request_id
    for out in result.outputs:
        tensor = reply.outputs.add(name=out.name, datatype=out.datatype, shape=out.shape)
        if raw:
            reply.raw_output_contents.append(out.raw())
        elif out.datatype == "FP64":
            tensor.contents.fp64_contents.extend(out.array.ravel().tolist())
        else:
            tensor.contents.int64_contents.extend(out.array.ravel().tolist())
    return reply


def _address(settings: Settings) -> str:
    host = settings.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{host}:{settings.grpc_port}"


async def start_server(app: FastAPI, services: Services, handler: OipHandler) -> aio.Server:
    settings = services.settings
    server = aio.server(
        options=[
            # Every worker binds the same port; the kernel balances connections among them.
            ("grpc.so_reuseport", 1),
            # The same bound on a request as REST's body limit.
            ("grpc.max_receive_message_length", settings.max_body_bytes),
            # HTTP/2 multiplexes every call of a client (Traefik) on one connection, which
            # SO_REUSEPORT hands to one worker: ending connections now and then (the client
            # reconnects, in-flight calls finish) spreads them over the workers again.
            ("grpc.max_connection_age_ms", _MAX_CONNECTION_AGE_MS),
            ("grpc.max_connection_age_grace_ms", _MAX_CONNECTION_AGE_GRACE_MS),
        ]
    )
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(app, services, handler), server
    )
    address = _address(settings)
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot listen for gRPC on {address}: {exc}") from exc
    await server.start()
    log.info("gRPC (Open Inference Protocol) on %s", address)
    return server
