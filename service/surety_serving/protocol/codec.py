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

from surety_serving.errors import InvalidInputError, describe_validation
from surety_serving.protocol.datatypes import JSON_KINDS, NUMPY_DTYPES
from surety_serving.protocol.schemas import InferenceRequest, RequestInput
from surety_serving.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor

HEADER_LENGTH = "inference-header-content-length"
JSON_TYPE = "application/json"
BINARY_TYPE = "application/octet-stream"
LENGTH_PREFIX = 4
#: The most dimensions a request tensor may have (numpy's own limit before numpy 2).
MAX_DIMS = 32
#: How a JSON value that should have been a string is named in errors.
JSON_NAMES: dict[type, str] = {
    bool: "true/false",
    int: "a number",
    float: "a number",
    type(None): "null",
    list: "a list (the data is ragged or nested too deep)",
    dict: "an object",
}


def decode_request(
    body: bytes, header_length: str | None = None, *, max_tensors: int, max_elements: int
) -> InferRequest:
    """Parse a request body; ``header_length`` is the binary extension's header value.

    The work a request may cause is bounded before any of it is done: at most ``max_tensors``
    entries in ``inputs`` and in ``outputs``, and at most ``max_elements`` tensor elements
    (numbers or strings) across the inputs, as their shapes declare them.
    """
    header, blob = _split(body, header_length)
    try:
        raw = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise InvalidInputError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise InvalidInputError("request body must be a JSON object")
    # Counted on the parsed JSON: validating thousands of entries is itself the work to refuse.
    for key in ("inputs", "outputs"):
        entries = raw.get(key)
        if isinstance(entries, list) and len(entries) > max_tensors:
            raise InvalidInputError(
                f"the request lists {len(entries)} {key}, over the limit of {max_tensors}"
            )
    try:
        request = InferenceRequest.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInputError(describe_validation(exc)) from exc

    counts = _element_counts(request.inputs, max_elements)
    inputs: list[Tensor] = []
    offset = 0
    for item, count in zip(request.inputs, counts, strict=True):
        size = item.parameters.get("binary_data_size")
        if size is None:
            array = _from_json(item, count)
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
            array = _from_binary(item, chunk, count)
        inputs.append(Tensor(item.name, item.datatype, array))
    if offset != len(blob):
        raise InvalidInputError(f"{len(blob) - offset} bytes of binary data belong to no input")

    outputs = None
    if request.outputs is not None:
        outputs = [RequestedOutput(o.name, o.parameters) for o in request.outputs]
    return InferRequest(inputs, outputs, request.id, request.parameters)


def _element_counts(items: list[RequestInput], max_elements: int) -> list[int]:
    """Each input's element count, once every name and shape is known to be acceptable."""
    names: set[str] = set()
    counts = []
    total = 0
    for item in items:
        if item.name in names:
            raise InvalidInputError(f"input '{item.name}' is given more than once")
        names.add(item.name)
        if len(item.shape) > MAX_DIMS:
            raise InvalidInputError(
                f"input '{item.name}': shape has {len(item.shape)} dimensions, over the limit "
                f"of {MAX_DIMS}"
            )
        if any(dim < 0 for dim in item.shape):
            raise InvalidInputError(
                f"input '{item.name}': shape {item.shape} has a negative dimension"
            )
        # A zero dimension empties the tensor, yet numpy still lays out the other dimensions
        # (and fails on absurd ones): their product must be within the limit as well.
        extent = math.prod(dim for dim in item.shape if dim)
        if extent > max_elements:
            ignoring = " (not counting its zero dimensions)" if 0 in item.shape else ""
            raise InvalidInputError(
                f"input '{item.name}': shape {item.shape} spans {extent} elements{ignoring}, "
                f"over the {max_elements}-element limit"
            )
        count = math.prod(item.shape)
        total += count
        if total > max_elements:
            raise InvalidInputError(
                f"input '{item.name}': shape {item.shape} brings the request to {total} "
                f"elements, over the {max_elements}-element limit"
            )
        counts.append(count)
    return counts


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


def _from_json(item: RequestInput, count: int) -> np.ndarray:
    if item.data is None:
        raise InvalidInputError(f"input '{item.name}' has neither data nor binary_data_size")
    dtype = NUMPY_DTYPES[item.datatype]
    if dtype.kind == "O":
        return _reshape(item, _strings(item), count)
    try:
        array = np.asarray(item.data)
        if dtype == np.uint64 and array.dtype.kind == "f":
            # numpy reads integers above the int64 range as float64; keep them exact.
            array = _exact_uint64(item)
    except ValueError as exc:
        raise InvalidInputError(f"input '{item.name}': data is ragged or not a tensor") from exc
    if array.size and array.dtype.kind not in JSON_KINDS[dtype.kind]:
        expected = "true/false" if dtype.kind == "b" else "numbers"
        raise InvalidInputError(f"input '{item.name}': {item.datatype} data must be {expected}")
    if dtype.kind in "iu" and array.size:
        info = np.iinfo(dtype.type)  # type: ignore[type-var]
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInputError(f"input '{item.name}': values out of range for {item.datatype}")
    return _reshape(item, array.astype(dtype, copy=False), count)


def _strings(item: RequestInput) -> np.ndarray:
    """BYTES from JSON, as UTF-8: strings only, since numpy would turn numbers into text."""
    try:
        values = np.array(item.data, dtype=object)  # nesting resolved, leaves kept as parsed
    except ValueError as exc:
        raise InvalidInputError(f"input '{item.name}': data is ragged or not a tensor") from exc
    flat = values.ravel().tolist()
    for index, value in enumerate(flat):
        if not isinstance(value, str):
            raise InvalidInputError(
                f"input '{item.name}': BYTES data must be strings; element {index} is "
                f"{JSON_NAMES.get(type(value), type(value).__name__)}"
            )
    return np.array([value.encode() for value in flat], dtype=object)


def _exact_uint64(item: RequestInput) -> np.ndarray:
    values = np.array(item.data, dtype=object)
    if not all(type(v) is int and 0 <= v < 2**64 for v in values.ravel().tolist()):
        raise InvalidInputError(f"input '{item.name}': UINT64 data must be integers in range")
    return values.astype(np.uint64)


def _from_binary(item: RequestInput, chunk: bytes, count: int) -> np.ndarray:
    dtype = NUMPY_DTYPES[item.datatype]
    if dtype.kind != "O":
        if len(chunk) != count * dtype.itemsize:
            raise InvalidInputError(
                f"input '{item.name}': {len(chunk)} bytes for shape {item.shape} of "
                f"{item.datatype} ({count * dtype.itemsize} expected)"
            )
        return np.frombuffer(chunk, dtype=dtype).reshape(item.shape)
    elements: list[bytes] = []
    offset = 0
    while offset < len(chunk):
        # Empty elements cost 4 bytes each: stop at the shape's count, not at the chunk's end.
        if len(elements) == count:
            raise InvalidInputError(
                f"input '{item.name}': binary data holds more than the {count} BYTES elements "
                f"of shape {item.shape}"
            )
        if offset + LENGTH_PREFIX > len(chunk):
            raise InvalidInputError(f"input '{item.name}': BYTES element length is truncated")
        length = int.from_bytes(chunk[offset : offset + LENGTH_PREFIX], "little")
        offset += LENGTH_PREFIX
        if offset + length > len(chunk):
            raise InvalidInputError(f"input '{item.name}': BYTES element is truncated")
        elements.append(chunk[offset : offset + length])
        offset += length
    return _reshape(item, np.array(elements, dtype=object), count)


def _reshape(item: RequestInput, array: np.ndarray, count: int) -> np.ndarray:
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
