# The request models are built at run time from the settings (ranges, batch size);
# mypy cannot follow types made of runtime values.
# mypy: disable-error-code="valid-type,arg-type,misc,maybe-unrecognized-str-typeform"
"""Request and response models. Request models are built from the settings so the
OpenAPI document states the exact accepted ranges and batch size."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from .settings import Settings

_STRICT = ConfigDict(extra="forbid")


def _integral(value: Any) -> Any:
    # JSON says 3.0 is an integer; pydantic's strict int does not. Booleans and strings stay out.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _int(lo: int, hi: int) -> Any:
    return Annotated[int, Field(strict=True, ge=lo, le=hi), BeforeValidator(_integral)]


def _feature(lo: float, hi: float) -> Any:
    return Annotated[float, Field(strict=True, allow_inf_nan=False, ge=lo, le=hi)]


class RequestModels:
    """The request bodies whose constraints depend on the settings."""

    def __init__(self, settings: Settings) -> None:
        ranges = settings.feature_ranges
        self.ranges = ranges
        f = [_feature(r.min, r.max) for r in ranges]
        row = tuple[f[0], f[1], f[2], f[3]]  # type: ignore[valid-type]
        self.row = row
        n = settings.max_batch
        self.features_request = create_model(
            "FeaturesRequest",
            __config__=_STRICT,
            features=(row, Field(description="One row: exactly 4 finite numbers")),
        )
        self.instances_request = create_model(
            "InstancesRequest",
            __config__=_STRICT,
            instances=(list[row], Field(min_length=1, max_length=n, description=f"1 to {n} rows")),  # type: ignore[valid-type]
        )
        lo = min(r.min for r in ranges)
        hi = max(r.max for r in ranges)
        flat = list[_feature(lo, hi)]  # type: ignore[misc]
        tensor = create_model(
            "InferInputTensor",
            __config__=_STRICT,
            name=(Annotated[str, Field(min_length=1, max_length=64)], ...),
            shape=(
                tuple[_int(1, n), Literal[4]],
                Field(description="[rows, 4]; must agree with data"),
            ),
            datatype=(
                Literal["FP64", "FP32"],
                Field(description="FP64 or FP32 (the values are computed in FP64)"),
            ),
            # Optional here only for the binary tensor data extension: without
            # Inference-Header-Content-Length it is required (the OpenAPI document says so).
            data=(
                Annotated[list[row], Field(min_length=1, max_length=n)]  # type: ignore[valid-type]
                | Annotated[flat, Field(min_length=4, max_length=4 * n)]
                | None,
                Field(None, description="rows, or the same values flattened row-major"),
            ),
            parameters=(_Parameters | None, None),
        )
        self.infer_request = create_model(
            "InferRequest",
            __config__=_STRICT,
            id=(Annotated[str, Field(max_length=128)] | None, None),
            inputs=(Annotated[list[tensor], Field(min_length=1, max_length=1)], ...),  # type: ignore[valid-type]
            outputs=(
                Annotated[list[InferRequestedOutput], Field(min_length=1, max_length=2)] | None,
                None,
            ),
            parameters=(_Parameters | None, None),
        )


# Open Inference Protocol parameters: name -> string, number or boolean.
_Parameters = Annotated[
    dict[Annotated[str, Field(max_length=64)], str | int | float | bool], Field(max_length=32)
]


class InferRequestedOutput(BaseModel):
    model_config = _STRICT
    name: Literal["probabilities", "predicted_class"]
    parameters: _Parameters | None = Field(
        None, description='{"binary_data": true}: this output as binary tensor data'
    )


class FeedbackRequest(BaseModel):
    model_config = _STRICT
    request_id: Annotated[
        str, Field(pattern=r"^[0-9a-f]{32}$", description="request id of the prediction")
    ]
    instance: _int(0, 10_000) = 0  # type: ignore[valid-type]
    true_class: (
        _int(0, 1000)  # type: ignore[valid-type]
        | Annotated[str, Field(min_length=1, max_length=64)]
    )


# ----- responses -----


class ErrorDetail(BaseModel):
    code: str
    message: str
    request_id: str | None
    details: list[dict[str, Any]] | None = None
    missing_permission: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class TokenResponse(BaseModel):
    access_token: str
    token_type: Literal["bearer"]
    expires_in: int


class RevokeResponse(BaseModel):
    revoked: bool


class Prediction(BaseModel):
    class_index: int
    class_name: str
    probabilities: dict[str, float]


class PredictResponse(Prediction):
    request_id: str
    model_name: str
    model_version: str


class BatchPredictResponse(BaseModel):
    request_id: str
    model_name: str
    model_version: str
    predictions: list[Prediction]


class ModelInfo(BaseModel):
    name: str
    version: str
    sha256: str
    backend: str
    trained_at: str | None
    metrics: dict[str, Any]
    feature_names: list[str]
    class_names: list[str]


class VersionInfo(BaseModel):
    version: str
    status: str
    reason: str | None = None
    trained_at: str | None = None
    metrics: dict[str, Any] | None = None


class VersionList(BaseModel):
    name: str
    active: str | None
    versions: list[VersionInfo]


class ImportedVersion(BaseModel):
    version: str
    status: Literal["imported", "present", "refused"]
    reason: str | None = None
    detail: str | None = None


class ImportReport(BaseModel):
    name: str
    results: list[ImportedVersion]


class UserInfo(BaseModel):
    name: str
    role: str


class FeedbackResponse(BaseModel):
    request_id: str
    instance: int
    model_version: str
    predicted_class: int
    true_class: int
    correct: bool
    rolling_accuracy: float


class Health(BaseModel):
    status: Literal["ok", "ready", "degraded", "not_ready"]
    model_loaded: bool | None = None
    model_version: str | None = None
    redis: Literal["up", "down"] | None = None


# ----- Open Inference Protocol (v2) responses -----


class OipError(BaseModel):
    """The protocol's error body on every /v2 route."""

    error: str


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int]


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class InferOutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[float] | list[int] | None = None
    parameters: dict[str, int] | None = None


class InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str
    outputs: list[InferOutputTensor]
    parameters: dict[str, str] | None = None
