"""Decode OIP v2 request bodies into numpy tensors and encode responses, JSON or binary.

The binary tensor extension: the body is a JSON header of ``Inference-Header-Content-Length``
bytes followed by raw little-endian row-major tensors, each input saying its size in
``parameters.binary_data_size``; BYTES elements are a 4-byte little-endian length and the bytes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from service.errors import InvalidInputError, describe_validation
from service.protocol.datatypes import JSON_KINDS, NUMPY_DTYPES
from service.protocol.schemas import InferenceRequest, RequestInput
from service.runtime.types import InferRequest, InferResponse, RequestedOutput, Tensor

HEADER_LENGTH = "inference-header-content-length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
LENGTH_PREFIX = 4


def decode_request(body: bytes, header_length: str | None = None) -> InferRequest:
    """Parse a request body; ``header_length`` is the binary extension's header value."""
    header, blob = _split(body, header_length)
    try:
        raw = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInputError("request body must be a JSON object")
    try:
        request = InferenceRequest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInputError(describe_validation(exc)) from exc

    inputs: list[Tensor] = []
    offset = 0
    for item in request.inputs:
        if any(t.name == item.name for t in inputs):
            raise InvalidInputError(f"input '{item.name}' is given more than once")
        if any(dim < 0 for dim in item.shape):
            raise InvalidInputError(
                f"input '{item.name}': shape {item.shape} has a negative dimension"
            )
        size = item.parameters.get("binary_data_size")
        if size is None:
            array = _from_json(item)
        else:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInputError(
                    f"input '{item.name}': binary_data_size must be an integer >= 0"
                )
            if item.data is not None:
                raise InvalidInputError(f"input '{item.name}' has both data and binary_data_size")
            chunk = blob[offset : offset + size]
            if len(chunk) < size:
                raise InvalidInputError(f"input '{item.name}': binary data is truncated")
            offset += size
            array = _from_binary(item, chunk)
        inputs.append(Tensor(item.name, item.datatype, array))
    if offset != len(blob):
        raise InvalidInputError(f"{len(blob) - offset} bytes of binary data belong to no input")

    outputs = None
    if request.outputs is not None:
        outputs = [RequestedOutput(o.name, o.parameters) for o in request.outputs]
    return InferRequest(inputs, outputs, request.id, request.parameters)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise InvalidInputError(
            f"Inference-Header-Content-Length {header_length!r} does not fit the "
            f"{len(body)}-byte body"
        )
    return body[:length], body[length:]


def _from_json(item: RequestInput) -> np.ndarray:
    if item.data is None:
        raise InvalidInputError(f"input '{item.name}' has neither data nor binary_data_size")
    dtype = NUMPY_DTYPES[item.datatype]
    try:
        array = np.asarray(item.data)
        if dtype == np.uint64 and array.dtype.kind == "f":
            # numpy reads integers above the int64 range as float64; keep them exact.
            array = _exact_uint64(item)
    except ValueError as exc:
        raise InvalidInputError(f"input '{item.name}': data is ragged or not a tensor") from exc
    if array.size and array.dtype.kind not in JSON_KINDS[dtype.kind]:
        expected = {"b": "true/false", "O": "strings"}.get(dtype.kind, "numbers")
        raise InvalidInputError(f"input '{item.name}': {item.datatype} data must be {expected}")
    if dtype.kind == "O":
        array = np.array([s.encode() for s in array.ravel().tolist()], dtype=object)
    else:
        if dtype.kind in "iu" and array.size:
            info = np.iinfo(dtype.type)  # type: ignore[type-var]
            if array.min() < info.min or array.max() > info.max:
                raise InvalidInputError(
                    f"input '{item.name}': values out of range for {item.datatype}"
                )
        array = array.astype(dtype, copy=False)
    return _reshape(item, array)


def _exact_uint64(item: RequestInput) -> np.ndarray:
    values = np.array(item.data, dtype=object)
    if not all(type(v) is int and 0 <= v < 2**64 for v in values.ravel().tolist()):
        raise InvalidInputError(f"input '{item.name}': UINT64 data must be integers in range")
    return values.astype(np.uint64)


def _from_binary(item: RequestInput, chunk: bytes) -> np.ndarray:
    dtype = NUMPY_DTYPES[item.datatype]
    if dtype.kind != "O":
        count = math.prod(item.shape)
        if len(chunk) != count * dtype.itemsize:
            raise InvalidInputError(
                f"input '{item.name}': {len(chunk)} bytes for shape {item.shape} of "
                f"{item.datatype} ({count * dtype.itemsize} expected)"
            )
        return np.frombuffer(chunk, dtype=dtype).reshape(item.shape)
    elements: list[bytes] = []
    offset = 0
    while offset < len(chunk):
        if offset + LENGTH_PREFIX > len(chunk):
            raise InvalidInputError(f"input '{item.name}': BYTES element length is truncated")
        length = int.from_bytes(chunk[offset : offset + LENGTH_PREFIX], "little")
        offset += LENGTH_PREFIX
        if offset + length > len(chunk):
            raise InvalidInputError(f"input '{item.name}': BYTES element is truncated")
        elements.append(chunk[offset : offset + length])
        offset += length
    return _reshape(item, np.array(elements, dtype=object))


def _reshape(item: RequestInput, array: np.ndarray) -> np.ndarray:
    count = math.prod(item.shape)
    if array.size != count:
        raise InvalidInputError(
            f"input '{item.name}': shape {item.shape} needs {count} values, data has {array.size}"
        )
    return array.reshape(item.shape)


def encode_response(response: InferResponse, request: InferRequest) -> tuple[bytes, str, int]:
    """Serialise a response: (body, content type, JSON header length for the binary case).

    Outputs go binary when the request asked (``outputs[].parameters.binary_data`` or the
    request-level ``binary_data_output``); the header length is 0 when nothing is binary.
    """
    binary_default = bool(request.parameters.get("binary_data_output", False))
    asked = {o.name: o.parameters for o in request.outputs or ()}
    outputs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for tensor in response.outputs:
        entry: dict[str, Any] = {
            "name": tensor.name,
            "datatype": tensor.datatype,
            "shape": list(tensor.data.shape),
        }
        if asked.get(tensor.name, {}).get("binary_data", binary_default):
            raw = _to_binary(tensor.data)
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            entry["data"] = _to_json(tensor.data)
        outputs.append(entry)
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
    }
    if response.id is not None:
        body["id"] = response.id
    if response.parameters:
        body["parameters"] = response.parameters
    body["outputs"] = outputs
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return header, JSON_TYPE, 0
    return header + b"".join(blobs), BINARY_TYPE, len(header)


def _to_json(array: np.ndarray) -> Any:
    if array.dtype.kind == "O":
        return [_text(element) for element in array.ravel().tolist()]
    return np.ascontiguousarray(array).ravel()


def _text(element: object) -> str:
    return element.decode("utf-8", "replace") if isinstance(element, bytes) else str(element)


def _to_binary(array: np.ndarray) -> bytes:
    if array.dtype.kind != "O":
        return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    parts = []
    for element in array.ravel().tolist():
        raw = element if isinstance(element, bytes) else str(element).encode()
        parts.append(len(raw).to_bytes(LENGTH_PREFIX, "little") + raw)
    return b"".join(parts)
