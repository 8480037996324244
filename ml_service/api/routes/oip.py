"""The Open Inference Protocol (KServe v2) over REST, with the binary tensor data extension.

No ``from __future__ import annotations`` here: FastAPI must see the real types. The
protocol logic is ``ml_service.oip.handlers``; this module only reads and writes HTTP:

* an infer body is JSON, or (``Inference-Header-Content-Length: N``) N bytes of JSON
  followed by the inputs' raw little-endian bytes in input order, each input naming its
  size in ``parameters.binary_data_size``; ``Content-Encoding: gzip`` or ``deflate`` is read;
* an output is returned as binary data when its ``parameters.binary_data`` is true, or, for
  outputs not requested by name, when the request's ``parameters.binary_data_output`` is.
"""

import zlib
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Request
from pydantic import ValidationError
from starlette.responses import Response

from ...http_errors import ApiError, validation_message
from ...json_response import JsonResponse
from ...oip.handlers import OipHandler
from ...oip.tensors import InferRequest, InferResult, InputTensor, RequestedOutput
from ...schemas import (
    InferResponse,
    RequestModels,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
)
from ...services import Services
from ..deps import ModelReader, OipHandlerDep, Predictor, ServicesDep
from ..openapi_errors import oip_error_responses
from .health import readiness

HEADER_LENGTH = "inference-header-content-length"
# tritonclient's asyncio HTTP client (aiohttp) sends even an all-JSON body as octet-stream.
_CONTENT_TYPES = (
    "",
    "application/json",
    "application/octet-stream",
    "application/vnd.sagemaker-triton.binary+json",
)

Name = Annotated[str, Path(min_length=1, max_length=64)]
Version = Annotated[str, Path(min_length=1, max_length=64)]
READ_ERRORS = oip_error_responses(401, 403, 404, 429, 503)


def _inline_refs(schema: dict[str, Any]) -> dict[str, Any]:
    """The request body schema without ``$defs`` (the OpenAPI document has no home for them)."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return walk(defs[ref.removeprefix("#/$defs/")])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    inlined: dict[str, Any] = walk(schema)
    return inlined


def _infer_body_doc(models: RequestModels) -> dict[str, Any]:
    schema = _inline_refs(models.infer_request.model_json_schema())
    # JSON tensor data is required in a JSON body; binary data is described in prose.
    tensor = schema["properties"]["inputs"]["items"]
    tensor["required"] = [*tensor.get("required", []), "data"]
    tensor["properties"]["data"]["anyOf"] = [
        s for s in tensor["properties"]["data"]["anyOf"] if s.get("type") != "null"
    ]
    tensor["properties"]["data"].pop("default", None)
    return {
        "required": True,
        "description": (
            "JSON as below, or the binary tensor data extension: the header "
            "Inference-Header-Content-Length gives the length of the JSON part, the inputs "
            "give their byte counts in parameters.binary_data_size (their data then follows "
            "the JSON, little-endian, in input order)."
        ),
        "content": {"application/json": {"schema": schema}},
    }


_INFER_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "Outputs as JSON, or JSON followed by binary outputs "
        "(Inference-Header-Content-Length names the JSON part's length)",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    },
    **oip_error_responses(400, 401, 403, 404, 413, 415, 422, 429, 503),
}


async def _read_body(request: Request, limit: int) -> bytes:
    body = await request.body()
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise ApiError(415, f"Content-Encoding {encoding!r} is not supported (gzip, deflate)")
    wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise ApiError(400, f"the body is not valid {encoding} data") from None
    if len(data) > limit or inflater.unconsumed_tail:
        raise ApiError(413, f"request body larger than {limit} bytes once decompressed")
    return data


def _split(request: Request, body: bytes) -> tuple[bytes, bytes]:
    """The JSON part and the binary part of an infer body."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type not in _CONTENT_TYPES:
        raise ApiError(
            415, f"Content-Type {content_type!r}: send application/json or application/octet-stream"
        )
    declared = request.headers.get(HEADER_LENGTH)
    if declared is None:
        return body, b""
    try:
        length = int(declared)
    except ValueError:
        length = -1
    if not 0 < length <= len(body):
        raise ApiError(
            400, f"{HEADER_LENGTH} must be between 1 and the body's length ({len(body)})"
        )
    return body[:length], body[length:]


def _parameter_flag(parameters: dict[str, Any] | None, name: str, where: str) -> bool:
    value = (parameters or {}).get(name, False)
    if not isinstance(value, bool):
        raise ApiError(422, f"{where}: parameter {name} must be a boolean")
    return value


def _parse_infer(models: RequestModels, request: Request, body: bytes) -> InferRequest:
    header, binary = _split(request, body)
    try:
        parsed: Any = models.infer_request.model_validate_json(header)
    except ValidationError as exc:
        raise ApiError(422, validation_message(exc.errors(include_input=False))) from None
    inputs = []
    offset = 0
    for tensor in parsed.inputs:
        params = tensor.parameters or {}
        size = params.get("binary_data_size")
        raw = None
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise ApiError(422, f"input '{tensor.name}': binary_data_size must be a count")
            if tensor.data is not None:
                raise ApiError(
                    422, f"input '{tensor.name}' has both JSON data and binary_data_size"
                )
            raw = binary[offset : offset + size]
            if len(raw) != size:
                raise ApiError(
                    400,
                    f"input '{tensor.name}': binary_data_size {size} runs past the body's end",
                )
            offset += size
        elif tensor.data is None:
            raise ApiError(422, f"input '{tensor.name}' has neither data nor binary_data_size")
        shape = list(tensor.shape)
        inputs.append(InputTensor(tensor.name, tensor.datatype, shape, tensor.data, raw))
    if offset != len(binary):
        raise ApiError(400, f"{len(binary) - offset} bytes after the JSON part belong to no input")
    outputs = None
    if parsed.outputs:
        outputs = [
            RequestedOutput(
                o.name,
                _parameter_flag(o.parameters, "binary_data", o.name),
                "classification" in (o.parameters or {}),
            )
            for o in parsed.outputs
        ]
    return InferRequest(
        inputs,
        outputs,
        parsed.id,
        _parameter_flag(parsed.parameters, "binary_data_output", "request"),
    )


def _infer_response(result: InferResult) -> Response:
    outputs = []
    chunks = []
    for out in result.outputs:
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if out.binary:
            raw = out.raw()
            chunks.append(raw)
            entry["parameters"] = {"binary_data_size": len(raw)}
        else:
            entry["data"] = out.array.ravel().tolist()
        outputs.append(entry)
    header = orjson.dumps(
        {
            "model_name": result.model_name,
            "model_version": result.model_version,
            "id": result.id,
            "parameters": {"request_id": result.request_id},
            "outputs": outputs,
        }
    )
    if not chunks:
        # Encoded above, not by JsonResponse: with binary outputs its length frames them.
        return Response(header, media_type="application/json")
    return Response(
        b"".join([header, *chunks]),
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(len(header))},
    )


def build_router(models: RequestModels) -> APIRouter:
    router = APIRouter(tags=["v2"])
    infer_doc = {"requestBody": _infer_body_doc(models)}

    @router.get("/v2/health/live", response_model=V2Live, summary="OIP: server liveness")
    async def live(handler: OipHandlerDep) -> Response:
        return JsonResponse({"live": handler.live()})

    @router.get(
        "/v2/health/ready",
        response_model=V2Ready,
        responses={503: {"model": V2Ready, "description": "No verified model loaded"}},
        summary="OIP: server readiness",
    )
    async def ready(services: ServicesDep) -> Response:
        ok, _ = readiness(services)
        return JsonResponse({"ready": ok}, 200 if ok else 503)

    @router.get(
        "/v2",
        response_model=V2ServerMetadata,
        responses=oip_error_responses(401, 403, 429, 503),
        summary="OIP: server metadata",
    )
    async def server_metadata(handler: OipHandlerDep, principal: ModelReader) -> Response:
        return JsonResponse(handler.server_metadata())

    @router.get(
        "/v2/models/{name}",
        response_model=V2ModelMetadata,
        responses=READ_ERRORS,
        summary="OIP: model metadata (versions: the verified ones, active first)",
    )
    async def model_metadata(
        handler: OipHandlerDep, name: Name, principal: ModelReader
    ) -> Response:
        return JsonResponse(await handler.model_metadata(name, None))

    @router.get(
        "/v2/models/{name}/versions/{version}",
        response_model=V2ModelMetadata,
        responses=READ_ERRORS,
        summary="OIP: metadata of one verified model version",
    )
    async def version_metadata(
        handler: OipHandlerDep, name: Name, version: Version, principal: ModelReader
    ) -> Response:
        return JsonResponse(await handler.model_metadata(name, version))

    async def model_ready(handler: OipHandler, name: str, version: str | None) -> Response:
        await handler.model_ready(name, version)
        return JsonResponse({"name": name, "ready": True})

    @router.get(
        "/v2/models/{name}/ready",
        response_model=V2ModelReady,
        responses=READ_ERRORS,
        summary="OIP: model readiness (200 ready; 503 no model loaded)",
    )
    async def ready_active(handler: OipHandlerDep, name: Name, principal: ModelReader) -> Response:
        return await model_ready(handler, name, None)

    @router.get(
        "/v2/models/{name}/versions/{version}/ready",
        response_model=V2ModelReady,
        responses=READ_ERRORS,
        summary="OIP: readiness of one model version (verified: ready)",
    )
    async def ready_version(
        handler: OipHandlerDep, name: Name, version: Version, principal: ModelReader
    ) -> Response:
        return await model_ready(handler, name, version)

    async def infer(
        request: Request, services: Services, handler: OipHandler, name: str, version: str | None
    ) -> Response:
        body = await _read_body(request, services.settings.max_body_bytes)
        call = _parse_infer(models, request, body)
        result = await handler.infer(name, version, call, request.scope["ml"])
        return _infer_response(result)

    @router.post(
        "/v2/models/{name}/infer",
        response_model=InferResponse,
        responses=_INFER_RESPONSES,
        openapi_extra=infer_doc,
        summary="OIP: inference with the active version",
    )
    async def infer_active(
        request: Request,
        services: ServicesDep,
        handler: OipHandlerDep,
        name: Name,
        principal: Predictor,
    ) -> Response:
        return await infer(request, services, handler, name, None)

    @router.post(
        "/v2/models/{name}/versions/{version}/infer",
        response_model=InferResponse,
        responses=_INFER_RESPONSES,
        openapi_extra=infer_doc,
        summary="OIP: inference with one verified version (not activated)",
    )
    async def infer_version(
        request: Request,
        services: ServicesDep,
        handler: OipHandlerDep,
        name: Name,
        version: Version,
        principal: Predictor,
    ) -> Response:
        return await infer(request, services, handler, name, version)

    return router
