"""The protocol logic shared by the REST and gRPC front ends.

Addressing: the served model name, with no version (the active one) or any version of the
registry that passes verification (signature and file hashes, as for activation); such a
version is built on demand and kept for a while per worker, never activated. A refused or
unknown version is a 404 naming the reason.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any

import anyio
import numpy as np
import numpy.typing as npt

from .. import __version__
from ..http_errors import ApiError
from ..model import LoadedModel, ModelIntegrityError
from .tensors import INPUT_DTYPES, InferRequest, InferResult, InputTensor, OutputTensor

if TYPE_CHECKING:
    from ..services import Services

SERVER_NAME = "ml-api"
EXTENSIONS = ["binary_tensor_data"]
PLATFORM = "scikit-learn"
INPUT_NAME = "features"
OUTPUT_NAMES = ("probabilities", "predicted_class")
# Versions other than the active one kept built per worker, and how long before re-verifying.
_OTHER_VERSIONS = 2
_OTHER_TTL_SECONDS = 60.0
_VERSION_LIST_TTL_SECONDS = 5.0


class OipHandler:
    def __init__(self, services: Services) -> None:
        self.services = services
        ranges = services.models.ranges
        self._lo = np.array([r.min for r in ranges])
        self._hi = np.array([r.max for r in ranges])
        self._max_batch = services.settings.max_batch
        self._others: OrderedDict[str, tuple[LoadedModel, float]] = OrderedDict()
        self._others_lock = threading.Lock()
        self._version_list: tuple[float, list[str]] | None = None

    # ----- server -----

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.services.registry.active is not None

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}

    # ----- models -----

    async def model(self, name: str, version: str | None) -> LoadedModel:
        """The model a call addresses (``version`` empty or None: the active one)."""
        served = self.services.settings.model_name
        if name != served:
            raise ApiError(404, f"unknown model '{name}'; this server serves '{served}'")
        active = self.services.registry.active
        if active is None:
            raise ApiError(503, "no verified model is loaded", headers={"Retry-After": "5"})
        if not version or version == active.version:
            return active
        return await anyio.to_thread.run_sync(self._other_version, name, version)

    def _other_version(self, name: str, version: str) -> LoadedModel:
        now = time.monotonic()
        with self._others_lock:
            cached = self._others.get(version)
            if cached is not None and now - cached[1] < _OTHER_TTL_SECONDS:
                return cached[0]
        try:
            model = self.services.registry.build_version(version)
        except KeyError:
            raise ApiError(404, f"model '{name}' has no version '{version}'") from None
        except ModelIntegrityError as exc:
            raise ApiError(
                404, f"version '{version}' of model '{name}' failed verification ({exc.reason})"
            ) from None
        with self._others_lock:
            self._others[version] = (model, now)
            self._others.move_to_end(version)
            while len(self._others) > _OTHER_VERSIONS:
                self._others.popitem(last=False)
        return model

    async def versions(self) -> list[str]:
        """Verified versions, the active one first (cached briefly: listing verifies each)."""
        cached = self._version_list
        now = time.monotonic()
        if cached is not None and now - cached[0] < _VERSION_LIST_TTL_SECONDS:
            return cached[1]
        infos = await anyio.to_thread.run_sync(self.services.registry.versions)
        listed = [i.version for i in infos if i.status == "active"]
        listed += [i.version for i in infos if i.status == "available"]
        self._version_list = (now, listed)
        return listed

    async def model_metadata(self, name: str, version: str | None) -> dict[str, Any]:
        model = await self.model(name, version)
        versions = [model.version] if version else await self.versions()
        n_classes = len(model.class_names)
        return {
            "name": model.name,
            "versions": versions,
            "platform": PLATFORM,
            "inputs": [{"name": INPUT_NAME, "datatype": "FP64", "shape": [-1, model.n_features]}],
            "outputs": [
                {"name": "probabilities", "datatype": "FP64", "shape": [-1, n_classes]},
                {"name": "predicted_class", "datatype": "INT64", "shape": [-1]},
            ],
        }

    async def model_ready(self, name: str, version: str | None) -> bool:
        await self.model(name, version)
        return True

    # ----- inference -----

    async def infer(
        self, name: str, version: str | None, request: InferRequest, info: Any
    ) -> InferResult:
        """``info`` is the call's ``RequestInfo`` (request id; the model version is recorded)."""
        model = await self.model(name, version)
        info.model_version = model.version
        X = self._features(request, model.n_features)
        wanted = self._outputs(request)
        probas, classes = await self.services.predict(model, X, info.request_id)
        arrays = {"probabilities": ("FP64", probas), "predicted_class": ("INT64", classes)}
        outputs = [OutputTensor(n, arrays[n][0], arrays[n][1], binary) for n, binary in wanted]
        return InferResult(
            model.name,
            model.version,
            request.id if request.id else info.request_id,
            info.request_id,
            outputs,
        )

    def _features(self, request: InferRequest, n_features: int) -> npt.NDArray[np.float64]:
        if len(request.inputs) != 1:
            raise ApiError(
                422, f"the model takes one input tensor ('{INPUT_NAME}'), got {len(request.inputs)}"
            )
        tensor = request.inputs[0]
        dtype = INPUT_DTYPES.get(tensor.datatype)
        if dtype is None:
            raise ApiError(
                422,
                f"input '{tensor.name}': datatype {tensor.datatype} is not supported; "
                "send FP64 or FP32",
            )
        shape = list(tensor.shape)
        if len(shape) != 2 or shape[1] != n_features or not 1 <= shape[0] <= self._max_batch:
            raise ApiError(
                422,
                f"input '{tensor.name}': shape {shape} does not fit the model's "
                f"[-1, {n_features}] with 1 to {self._max_batch} rows",
            )
        X = self._values(tensor, dtype, shape[0] * n_features).reshape(shape)
        bad = ~np.isfinite(X) | (self._lo > X) | (self._hi < X)
        if bad.any():
            row, col = (int(i) for i in np.argwhere(bad)[0])
            raise ApiError(
                422,
                f"input '{tensor.name}': value {X[row, col]!r} at [{row}, {col}] is outside "
                f"its allowed range [{self._lo[col]}, {self._hi[col]}]",
            )
        return X

    @staticmethod
    def _values(tensor: InputTensor, dtype: np.dtype[Any], count: int) -> npt.NDArray[np.float64]:
        if tensor.raw is not None:
            if len(tensor.raw) != count * dtype.itemsize:
                raise ApiError(
                    422,
                    f"input '{tensor.name}': {len(tensor.raw)} bytes of binary data; "
                    f"shape {tensor.shape} of {tensor.datatype} needs {count * dtype.itemsize}",
                )
            return np.frombuffer(tensor.raw, dtype=dtype).astype(np.float64)
        if tensor.data is None:
            raise ApiError(422, f"input '{tensor.name}' has no data")
        try:
            # Through the declared datatype: FP32 data is rounded as the client's would be.
            values = np.asarray(tensor.data, dtype=dtype).astype(np.float64).ravel()
        except (TypeError, ValueError):
            raise ApiError(
                422, f"input '{tensor.name}': data must be numbers (flat or nested rows)"
            ) from None
        if values.size != count:
            raise ApiError(
                422,
                f"input '{tensor.name}': {values.size} values do not match shape {tensor.shape}",
            )
        return values

    @staticmethod
    def _outputs(request: InferRequest) -> list[tuple[str, bool]]:
        if not request.outputs:
            return [(name, request.binary_outputs) for name in OUTPUT_NAMES]
        wanted = []
        for out in request.outputs:
            if out.name not in OUTPUT_NAMES:
                raise ApiError(
                    422,
                    f"unknown output '{out.name}'; the model's outputs are "
                    + ", ".join(OUTPUT_NAMES),
                )
            if out.classification:
                raise ApiError(
                    422,
                    f"output '{out.name}': the classification extension is not supported; "
                    "predicted_class holds the class index",
                )
            wanted.append((out.name, out.binary))
        return wanted
