"""The one JSON response class of the service: routes and error handlers answer with it."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class JsonResponse(Response):
    """``application/json`` (no charset parameter: JSON is UTF-8) encoded by orjson.

    orjson rather than Starlette's JSONResponse (json.dumps): several times faster for the
    prediction bodies, and compact. Routes return it themselves, so FastAPI's response_model
    only documents the body; it is not validated and encoded a second time.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)
