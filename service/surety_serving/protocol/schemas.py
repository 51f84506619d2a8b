"""Pydantic models of the OIP v2 REST bodies (validation of requests, docs of responses)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from surety_serving.protocol.datatypes import Datatype

ParameterValue = str | int | float | bool
Parameters = dict[str, ParameterValue]


def known(**properties: dict[str, Any]) -> dict[str, Any]:
    """Schema of the parameters the server reads; any other is accepted and ignored."""
    return {"properties": properties}


POSITIVE: dict[str, Any] = {"type": "number", "exclusiveMinimum": 0}
FLAG: dict[str, Any] = {"type": "boolean"}
#: The default model's input, all zeros: the documented example of a request.
EXAMPLE_REQUEST: dict[str, Any] = {
    "inputs": [{"name": "image", "shape": [1, 64], "datatype": "FP32", "data": [0.0] * 64}]
}


class RequestInput(BaseModel):
    """``$request_input``: ``data`` is flat or nested, row-major; absent for binary inputs."""

    name: str = Field(min_length=1)
    shape: list[int] = Field(min_length=0)
    datatype: Datatype
    parameters: Parameters = Field(
        default_factory=dict,
        json_schema_extra=known(
            binary_data_size={
                "type": "integer",
                "minimum": 0,
                "description": "binary: its bytes in the body",
            }
        ),
    )
    data: list[Any] | None = None


class RequestOutput(BaseModel):
    """``$request_output``: ``parameters.binary_data`` asks for the binary extension."""

    name: str = Field(min_length=1)
    parameters: Parameters = Field(default_factory=dict, json_schema_extra=known(binary_data=FLAG))


class InferenceRequest(BaseModel):
    """``$inference_request``."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_REQUEST]})

    id: str | None = None
    parameters: Parameters = Field(
        default_factory=dict,
        json_schema_extra=known(
            binary_data_output={**FLAG, "description": "every output in binary"},
            temperature={**POSITIVE, "description": "score, uncertainty: logits / temperature"},
            timeout_ms={**POSITIVE, "description": "deadline in ms after arrival, else 504"},
        ),
    )
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    """``$response_output``."""

    name: str
    shape: list[int]
    datatype: Datatype
    parameters: Parameters | None = None
    data: list[Any] | None = None


class InferenceResponse(BaseModel):
    """``$inference_response``."""

    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: Parameters | None = None
    outputs: list[ResponseOutput]


class TensorMetadata(BaseModel):
    """``$metadata_tensor``: -1 marks a variable dimension."""

    name: str
    datatype: Datatype
    shape: list[int]


class ModelMetadata(BaseModel):
    """``$metadata_model_response``."""

    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ServerMetadata(BaseModel):
    """``$metadata_server_response``; ``extensions`` lists what this server adds."""

    name: str
    version: str
    extensions: list[str]


class Liveness(BaseModel):
    """``GET /v2/health/live``."""

    live: bool


class Readiness(BaseModel):
    """``GET /v2/health/ready`` (the status code says the same)."""

    ready: bool


class ModelReadiness(Readiness):
    """``GET /v2/models/{model}[/versions/{v}]/ready``."""

    name: str


class ErrorBody(BaseModel):
    """Every error answer."""

    error: str
