"""Prediction, model information, feedback and the Open Inference Protocol (v2) routes.

No ``from __future__ import annotations`` here: the request body types are built
from the settings at start-up, and FastAPI must see them as real objects.
"""

import logging
from typing import Annotated, Any

import anyio
import numpy as np
import orjson
from fastapi import APIRouter, Body, Path, Request
from starlette.responses import Response

from . import metrics
from .auth import Principal, require
from .errors import ApiError
from .model import LoadedModel
from .openapi import AUTHED, errors
from .redis_state import RedisUnavailable
from .schemas import (
    BatchPredictResponse,
    FeedbackRequest,
    FeedbackResponse,
    InferResponse,
    ModelInfo,
    PredictResponse,
    RequestModels,
    V2ModelMetadata,
)
from .services import Services, model_info_body

log = logging.getLogger("ml_service.predict")


def _json(data: object) -> Response:
    return Response(orjson.dumps(data), media_type="application/json")


def _active(services: Services) -> LoadedModel:
    model = services.registry.active
    if model is None:
        raise ApiError(503, "no verified model is loaded", headers={"Retry-After": "5"})
    return model


async def _infer(
    services: Services, request: Request, rows: object
) -> tuple[LoadedModel, np.ndarray, np.ndarray]:
    model = _active(services)
    request.scope["ml"].model_version = model.version
    X = np.array(rows, dtype=np.float64)
    if model.backend == "sklearn":
        # scikit-learn's predict_proba takes milliseconds; keep the event loop free.
        probas = await anyio.to_thread.run_sync(model.predict_proba, X)
    else:
        probas = model.predict_proba(X)
    classes = probas.argmax(axis=1)
    version = model.version
    names = model.class_names
    for c in classes.tolist():
        metrics.PREDICTIONS.labels(names[c], version).inc()
    try:
        services.monitor.observe(model, X, probas)
    except Exception:
        log.exception("prediction monitor failed")
    services.redis.remember_prediction(request.scope["ml"].request_id, classes.tolist(), version)
    return model, probas, classes


def _predictions(
    model: LoadedModel, probas: np.ndarray, classes: np.ndarray
) -> list[dict[str, object]]:
    names = model.class_names
    return [
        {
            "class_index": c,
            "class_name": names[c],
            "probabilities": dict(zip(names, row, strict=True)),
        }
        for c, row in zip(classes.tolist(), probas.tolist(), strict=True)
    ]


def build_router(models: RequestModels) -> APIRouter:
    router = APIRouter()
    PredictBody = models.features_request | models.instances_request
    InferBody = models.infer_request

    @router.post(
        "/predict",
        tags=["predict"],
        response_model=PredictResponse | BatchPredictResponse,
        responses=errors(*AUTHED),
        summary="Classify one row (features) or a batch (instances)",
    )
    async def predict(
        request: Request,
        body: Annotated[PredictBody, Body()],  # type: ignore[valid-type]
        principal: Annotated[Principal, require("predict", "predict")],
    ) -> Response:
        services: Services = request.app.state.services
        single = getattr(body, "features", None)
        rows = [single] if single is not None else body.instances  # type: ignore[attr-defined]
        model, probas, classes = await _infer(services, request, rows)
        preds = _predictions(model, probas, classes)
        head = {
            "request_id": request.scope["ml"].request_id,
            "model_name": model.name,
            "model_version": model.version,
        }
        if single is not None:
            return _json({**head, **preds[0]})
        return _json({**head, "predictions": preds})

    @router.get(
        "/model/info",
        tags=["model"],
        response_model=ModelInfo,
        responses=errors(401, 403, 429, 503),
        summary="The served model: version, SHA-256, metrics, features, classes",
    )
    async def model_info(
        request: Request, principal: Annotated[Principal, require("model:read", "read")]
    ) -> Response:
        return _json(model_info_body(_active(request.app.state.services)))

    @router.post(
        "/feedback",
        tags=["predict"],
        response_model=FeedbackResponse,
        responses=errors(*AUTHED, 404, 409),
        summary="Report the true class of an earlier prediction (rolling accuracy)",
    )
    async def feedback(
        request: Request,
        body: FeedbackRequest,
        principal: Annotated[Principal, require("feedback:write", "predict")],
    ) -> Response:
        services: Services = request.app.state.services
        model = _active(services)
        if isinstance(body.true_class, str):
            label = (
                model.class_names.index(body.true_class)
                if body.true_class in model.class_names
                else -1
            )
        else:
            label = body.true_class
        if not services.redis.up:
            raise ApiError(
                503, "the feedback store is temporarily unavailable", headers={"Retry-After": "5"}
            )
        try:
            predicted, correct, version = await services.redis.feedback(
                body.request_id, body.instance, label, len(model.class_names)
            )
        except RedisUnavailable:
            raise ApiError(
                503, "the feedback store is temporarily unavailable", headers={"Retry-After": "5"}
            ) from None
        if predicted == -1:
            raise ApiError(
                404,
                "no prediction with this request id and instance "
                "(unknown, expired or already rated)",
            )
        if predicted == -2:
            # 409: the body is well-formed; it conflicts with the classes of the served model.
            raise ApiError(409, "true_class is not a class of the model")
        accuracy = services.monitor.observe_feedback(version or model.version, correct)
        return _json(
            {
                "request_id": body.request_id,
                "instance": body.instance,
                "model_version": version or model.version,
                "predicted_class": predicted,
                "true_class": label,
                "correct": correct,
                "rolling_accuracy": accuracy,
            }
        )

    # ----- Open Inference Protocol (v2) -----

    def _check_name(services: Services, name: str) -> LoadedModel:
        model = _active(services)
        if name != model.name:
            raise ApiError(404, f"no model named {name!r}")
        return model

    @router.get(
        "/v2/models/{name}",
        tags=["v2"],
        response_model=V2ModelMetadata,
        responses=errors(401, 403, 404, 429, 503),
        summary="Open Inference Protocol: model metadata",
    )
    async def v2_model(
        request: Request,
        name: Annotated[str, Path(max_length=64)],
        principal: Annotated[Principal, require("model:read", "read")],
    ) -> Response:
        model = _check_name(request.app.state.services, name)
        return _json(
            {
                "name": model.name,
                "versions": [model.version],
                "platform": "scikit-learn",
                "inputs": [{"name": "features", "datatype": "FP64", "shape": [-1, 4]}],
                "outputs": [
                    {
                        "name": "probabilities",
                        "datatype": "FP64",
                        "shape": [-1, len(model.class_names)],
                    },
                    {"name": "predicted_class", "datatype": "INT64", "shape": [-1]},
                ],
            }
        )

    lo = np.array([r.min for r in models.ranges])
    hi = np.array([r.max for r in models.ranges])

    @router.post(
        "/v2/models/{name}/infer",
        tags=["v2"],
        response_model=InferResponse,
        responses=errors(*AUTHED, 404),
        summary="Open Inference Protocol: inference",
    )
    async def v2_infer(
        request: Request,
        name: Annotated[str, Path(max_length=64)],
        body: Annotated[InferBody, Body()],  # type: ignore[valid-type]
        principal: Annotated[Principal, require("predict", "predict")],
    ) -> Response:
        services: Services = request.app.state.services
        _check_name(services, name)
        req: Any = body  # built at run time from the settings
        tensor = req.inputs[0]
        data = tensor.data
        if data and isinstance(data[0], tuple):
            X = np.array(data, dtype=np.float64)
        else:
            if len(data) % 4:
                raise ApiError(422, "flat data must hold a multiple of 4 values")
            X = np.array(data, dtype=np.float64).reshape(-1, 4)
            bad = (lo > X) | (hi < X)
            if bad.any():
                raise ApiError(422, "a feature value is outside its allowed range")
        if tensor.shape[0] != X.shape[0]:
            raise ApiError(
                422, f"shape {list(tensor.shape)} does not match {X.shape[0]} rows of data"
            )
        model, probas, classes = await _infer(services, request, X)
        wanted = (
            {o.name for o in req.outputs} if req.outputs else {"probabilities", "predicted_class"}
        )
        outputs = []
        if "probabilities" in wanted:
            outputs.append(
                {
                    "name": "probabilities",
                    "shape": list(probas.shape),
                    "datatype": "FP64",
                    "data": probas.ravel().tolist(),
                }
            )
        if "predicted_class" in wanted:
            outputs.append(
                {
                    "name": "predicted_class",
                    "shape": [len(classes)],
                    "datatype": "INT64",
                    "data": classes.tolist(),
                }
            )
        request_id = request.scope["ml"].request_id
        return _json(
            {
                "model_name": model.name,
                "model_version": model.version,
                "id": req.id if req.id is not None else request_id,
                "outputs": outputs,
                "parameters": {"request_id": request_id},
            }
        )

    return router
