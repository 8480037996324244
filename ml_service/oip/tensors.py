"""Protocol-neutral tensors: what a request carries and what a response returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

# Input datatypes the model accepts (its features are computed in FP64), little-endian as
# the binary tensor data extension and gRPC raw contents specify.
INPUT_DTYPES: dict[str, np.dtype[Any]] = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8")}
OUTPUT_DTYPES: dict[str, np.dtype[Any]] = {"FP64": np.dtype("<f8"), "INT64": np.dtype("<i8")}


@dataclass(slots=True)
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    # Exactly one of the two: values from JSON or typed gRPC contents, or raw little-endian bytes.
    data: Any = None
    raw: bytes | None = None


@dataclass(slots=True)
class RequestedOutput:
    name: str
    binary: bool = False
    # Triton's classification extension (top-k class labels instead of the tensor).
    classification: bool = False


@dataclass(slots=True)
class InferRequest:
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    # Request-level binary_data_output: every output not requested otherwise is binary.
    binary_outputs: bool = False


@dataclass(slots=True)
class OutputTensor:
    name: str
    datatype: str
    array: npt.NDArray[Any]
    binary: bool = False

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)

    def raw(self) -> bytes:
        return np.ascontiguousarray(self.array, dtype=OUTPUT_DTYPES[self.datatype]).tobytes()


@dataclass(slots=True)
class InferResult:
    model_name: str
    model_version: str
    id: str
    request_id: str
    outputs: list[OutputTensor] = field(default_factory=list)
