"""Protocol-neutral requests and responses: named numpy tensors plus parameters."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Parameters = dict[str, str | int | float | bool]


@dataclass(frozen=True)
class Tensor:
    """A named tensor with its OIP datatype; BYTES data is an object array of bytes."""

    name: str
    datatype: str
    data: np.ndarray


@dataclass(frozen=True)
class RequestedOutput:
    """An output the client asked for, with its (transport) parameters."""

    name: str
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True)
class InferRequest:
    """A decoded inference request; ``outputs`` None means every output."""

    inputs: list[Tensor]
    outputs: list[RequestedOutput] | None = None
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)


@dataclass(frozen=True)
class InferResponse:
    """The result of infer or an extension, in the order the outputs are reported."""

    model_name: str
    model_version: str
    outputs: list[Tensor]
    id: str | None = None
    parameters: Parameters = field(default_factory=dict)
