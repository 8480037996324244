"""Prediction, model information and feedback routes (the Open Inference Protocol: oip.py).

No ``from __future__ import annotations`` here: the request body types are built
from the settings at start-up, and FastAPI must see them as real objects.
"""

import logging
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Body, Request
from starlette.responses import Response

from ...http_errors import ApiError
from ...json_response import JsonResponse
from ...middleware import RequestInfo
from ...model import LoadedModel
from ...redis_state import RedisUnavailable
from ...schemas import (
    BatchPredictResponse,
    FeedbackRequest,
    FeedbackResponse,
    ModelInfo,
    PredictResponse,
    RequestModels,
)
from ...services import Services, model_info_body
from ..deps import FeedbackWriter, ModelReader, Predictor, ServicesDep
from ..openapi_errors import AUTHED, error_responses

log = logging.getLogger("ml_service.predict")


def _active(services: Services) -> LoadedModel:
    model = services.registry.active
    if model is None:
        raise ApiError(503, "no verified model is loaded", headers={"Retry-After": "5"})
    return model


async def predict_body(services: Services, info: RequestInfo, body: object) -> dict[str, object]:
    """The answer of ``POST /predict`` to a validated body (the route's and the hot path's)."""
    single = getattr(body, "features", None)
    rows = [single] if single is not None else body.instances  # type: ignore[attr-defined]
    model = _active(services)
    info.model_version = model.version
    X = np.array(rows, dtype=np.float64)
    probas, classes = await services.predict(model, X, info.request_id)
    preds = _predictions(model, probas, classes)
    head = {
        "request_id": info.request_id,
        "model_name": model.name,
        "model_version": model.version,
    }
    if single is not None:
        return {**head, **preds[0]}
    return {**head, "predictions": preds}


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

    @router.post(
        "/predict",
        tags=["predict"],
        response_model=PredictResponse | BatchPredictResponse,
        responses=error_responses(*AUTHED),
        summary="Classify one row (features) or a batch (instances)",
    )
    async def predict(
        request: Request,
        services: ServicesDep,
        body: Annotated[PredictBody, Body()],  # type: ignore[valid-type]
        principal: Predictor,
    ) -> Response:
        return JsonResponse(await predict_body(services, request.scope["ml"], body))

    @router.get(
        "/model/info",
        tags=["model"],
        response_model=ModelInfo,
        responses=error_responses(401, 403, 429, 503),
        summary="The served model: version, SHA-256, metrics, features, classes",
    )
    async def model_info(services: ServicesDep, principal: ModelReader) -> Response:
        return JsonResponse(model_info_body(_active(services)))

    @router.post(
        "/feedback",
        tags=["predict"],
        response_model=FeedbackResponse,
        responses=error_responses(*AUTHED, 404, 409),
        summary="Report the true class of an earlier prediction (rolling accuracy)",
    )
    async def feedback(
        services: ServicesDep, body: FeedbackRequest, principal: FeedbackWriter
    ) -> Response:
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
        return JsonResponse(
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

    return router
