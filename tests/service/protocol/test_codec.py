"""The OIP codec over every datatype: JSON and binary requests, JSON and binary responses; the
limits on the work a request may cause, checked before the work."""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import orjson
import pytest

from surety_serving.errors import InvalidInputError
from surety_serving.protocol.codec import MAX_DIMS, decode_request, encode_response
from surety_serving.protocol.datatypes import NUMPY_DTYPES, datatype_of
from surety_serving.protocol.types import InferRequest, InferResponse, RequestedOutput, Tensor

pytestmark = pytest.mark.unit

SAMPLES = {
    "BOOL": np.array([[True, False, True], [False, False, True]]),
    "UINT8": np.array([[0, 7, 255], [1, 2, 3]], dtype=np.uint8),
    "UINT16": np.array([[0, 7, 65535], [1, 2, 3]], dtype=np.uint16),
    "UINT32": np.array([[0, 7, 2**32 - 1], [1, 2, 3]], dtype=np.uint32),
    "UINT64": np.array([[0, 7, 2**63], [1, 2, 3]], dtype=np.uint64),
    "INT8": np.array([[-128, 7, 127], [1, 2, 3]], dtype=np.int8),
    "INT16": np.array([[-32768, 7, 32767], [1, 2, 3]], dtype=np.int16),
    "INT32": np.array([[-(2**31), 7, 2**31 - 1], [1, 2, 3]], dtype=np.int32),
    "INT64": np.array([[-(2**63), 7, 2**63 - 1], [1, 2, 3]], dtype=np.int64),
    "FP16": np.array([[0.5, -2.0, 65504.0], [1, 2, 3]], dtype=np.float16),
    "FP32": np.array([[0.1, -2.5, 3.4e38], [1, 2, 3]], dtype=np.float32),
    "FP64": np.array([[0.1, -2.5, 1e300], [1, 2, 3]], dtype=np.float64),
    "BYTES": np.array([[b"a", b"", "é".encode()], [b"x\x00y", b"bb", b"c"]], dtype=object),
}


def decode(
    body: bytes,
    header_length: str | None = None,
    *,
    max_tensors: int = 64,
    max_elements: int = 1000,
) -> InferRequest:
    return decode_request(body, header_length, max_tensors=max_tensors, max_elements=max_elements)


def json_request(datatype: str, array: np.ndarray, nested: bool = False) -> bytes:
    data = array.tolist() if nested else array.ravel().tolist()
    if datatype == "BYTES":
        data = [[v.decode() for v in row] for row in data] if nested else [v.decode() for v in data]
    tensor = {"name": "x", "shape": list(array.shape), "datatype": datatype, "data": data}
    return orjson.dumps({"inputs": [tensor]})


def binary_blob(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return b"".join(len(v).to_bytes(4, "little") + v for v in array.ravel())
    return array.astype(NUMPY_DTYPES[datatype]).tobytes()


@pytest.mark.parametrize("datatype", list(SAMPLES))
@pytest.mark.parametrize("nested", [False, True])
def test_json_inputs_decode_to_numpy(datatype, nested):
    array = SAMPLES[datatype]
    (tensor,) = decode(json_request(datatype, array, nested)).inputs
    assert tensor.datatype == datatype
    assert tensor.data.shape == array.shape
    if datatype == "BYTES":
        assert tensor.data.tolist() == array.tolist()
    else:
        assert tensor.data.dtype == NUMPY_DTYPES[datatype]
        np.testing.assert_array_equal(tensor.data, array)


@pytest.mark.parametrize("datatype", list(SAMPLES))
def test_binary_inputs_decode_to_numpy(datatype):
    array = SAMPLES[datatype]
    blob = binary_blob(datatype, array)
    header = orjson.dumps(
        {
            "inputs": [
                {"name": "y", "shape": [1], "datatype": "INT32", "data": [5]},
                {
                    "name": "x",
                    "shape": list(array.shape),
                    "datatype": datatype,
                    "parameters": {"binary_data_size": len(blob)},
                },
            ]
        }
    )
    request = decode(header + blob, str(len(header)))
    assert request.inputs[1].data.tolist() == array.tolist()


@pytest.mark.parametrize("datatype", list(SAMPLES))
@pytest.mark.parametrize("binary", [False, True])
def test_outputs_encode_json_or_binary(datatype, binary):
    array = SAMPLES[datatype]
    response = InferResponse("m", "1", [Tensor("x", datatype, array)], id="7")
    request = InferRequest([], [RequestedOutput("x", {"binary_data": binary})])
    body, media_type, header_length = encode_response(response, request)
    if binary:
        assert media_type == "application/octet-stream"
        header = orjson.loads(body[:header_length])
        assert body[header_length:] == binary_blob(datatype, array)
        assert header["outputs"][0]["parameters"] == {"binary_data_size": len(body) - header_length}
    else:
        assert (media_type, header_length) == ("application/json", 0)
        header = orjson.loads(body)
        data = header["outputs"][0]["data"]
        expected = array.ravel().tolist()
        if datatype == "BYTES":
            expected = [v.decode() for v in expected]
        assert data == pytest.approx(expected) if datatype.startswith("FP") else data == expected
    assert header["outputs"][0]["shape"] == [2, 3]
    assert (header["model_name"], header["model_version"], header["id"]) == ("m", "1", "7")


def test_datatype_of_every_numpy_dtype():
    for datatype, array in SAMPLES.items():
        assert datatype_of(array) == datatype


@pytest.mark.parametrize(
    ("datatype", "data", "fragment"),
    [
        ("INT8", [1, 2, 300], "out of range for INT8"),
        ("UINT8", [1, 2, -1], "out of range for UINT8"),
        ("UINT64", [1, 2**64 - 1, 0.5], "UINT64 data must be integers"),
        ("INT32", [1, 2, 3.5], "INT32 data must be numbers"),
        ("BOOL", [1, 0, 1], "BOOL data must be true/false"),
        ("BYTES", [1, 2, 3], "BYTES data must be strings"),
        ("FP32", [1, None, 3], "FP32 data must be numbers"),
    ],
)
def test_json_data_must_match_the_datatype(datatype, data, fragment):
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [3], "datatype": datatype, "data": data}]}
    )
    with pytest.raises(InvalidInputError, match=fragment):
        decode(body)


@pytest.mark.parametrize(
    ("blob", "fragment"),
    [
        (b"\x05\x00\x00\x00ab", "BYTES element is truncated"),
        (b"\x05\x00", "BYTES element length is truncated"),
        (b"\x01\x00\x00\x00a", "shape [2] needs 2 values, data has 1"),
        (b"\x00" * 12, "binary data holds more than the 2 BYTES elements of shape [2]"),
    ],
)
def test_malformed_binary_bytes(blob, fragment):
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "t",
                    "shape": [2],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    )
    with pytest.raises(InvalidInputError, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        decode(header + blob, str(len(header)))


# -- bounded work ------------------------------------------------------------------------------


def tensor(name: str, shape: list[int], datatype: str = "FP32") -> dict[str, Any]:
    """A JSON input of zeros (or "a" strings) filling ``shape``."""
    count = math.prod(shape)
    return {
        "name": name,
        "shape": shape,
        "datatype": datatype,
        "data": ["a"] * count if datatype == "BYTES" else [0] * count,
    }


def as_binary(inputs: list[dict[str, Any]]) -> tuple[bytes, str]:
    """The same inputs through the binary extension: (body, header length)."""
    header: list[dict[str, Any]] = []
    blobs = []
    for item in inputs:
        data = item["data"]
        if item["datatype"] == "BYTES":
            blob = b"".join(len(v).to_bytes(4, "little") + v.encode() for v in data)
        else:
            blob = np.asarray(data, dtype=NUMPY_DTYPES[item["datatype"]]).tobytes()
        blobs.append(blob)
        fields = {k: v for k, v in item.items() if k != "data"}
        header.append({**fields, "parameters": {"binary_data_size": len(blob)}})
    raw = orjson.dumps({"inputs": header})
    return raw + b"".join(blobs), str(len(raw))


def decode_inputs(
    inputs: list[dict[str, Any]], binary: bool, max_elements: int = 1000
) -> InferRequest:
    if binary:
        return decode(*as_binary(inputs), max_elements=max_elements)
    return decode(orjson.dumps({"inputs": inputs}), max_elements=max_elements)


def refused(inputs: list[dict[str, Any]], binary: bool, max_elements: int = 1000) -> str:
    with pytest.raises(InvalidInputError) as error:
        decode_inputs(inputs, binary, max_elements)
    return str(error.value)


@pytest.mark.parametrize("key", ["inputs", "outputs"])
def test_entries_are_counted_before_they_are_validated(key):
    def body(count: int, entry: dict[str, Any]) -> bytes:
        request: dict[str, Any] = {"inputs": [tensor("x", [1])]}
        request[key] = [{**entry, "name": f"t{i}"} for i in range(count)]
        return orjson.dumps(request)

    valid = tensor("x", [1]) if key == "inputs" else {}
    decoded = decode(body(5, valid), max_tensors=5)
    assert len(decoded.inputs if key == "inputs" else decoded.outputs or ()) == 5
    # Invalid entries: the count is refused first, before any entry is looked at.
    with pytest.raises(InvalidInputError, match=f"the request lists 6 {key}, over the limit of 5"):
        decode(body(6, {"shape": "bad"}), max_tensors=5)


def test_repeated_names_are_found_in_linear_time():
    count = 20_000
    inputs = [tensor(f"x{i}", [1]) for i in range(count)] + [tensor("x0", [1])]
    body = orjson.dumps({"inputs": inputs})
    started = time.perf_counter()
    with pytest.raises(InvalidInputError, match="input 'x0' is given more than once"):
        decode(body, max_tensors=count + 1, max_elements=count + 1)
    # Comparing every name with every other takes tens of seconds here; a set, milliseconds.
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("binary", [False, True])
def test_dimensions_are_capped(binary):
    (decoded,) = decode_inputs([tensor("x", [1] * MAX_DIMS)], binary).inputs
    assert decoded.data.shape == (1,) * MAX_DIMS
    message = refused([tensor("x", [1] * (MAX_DIMS + 1))], binary)
    assert message == (
        f"input 'x': shape has {MAX_DIMS + 1} dimensions, over the limit of {MAX_DIMS}"
    )


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("datatype", ["FP32", "BYTES"])
def test_elements_are_capped_across_inputs(binary, datatype):
    inputs = [tensor("a", [4], datatype), tensor("b", [2, 3], datatype)]
    decoded = decode_inputs(inputs, binary, max_elements=10)
    assert [t.data.shape for t in decoded.inputs] == [(4,), (2, 3)]
    message = refused(
        [tensor("a", [4], datatype), tensor("b", [7], datatype)], binary, max_elements=10
    )
    assert message == (
        "input 'b': shape [7] brings the request to 11 elements, over the 10-element limit"
    )
    message = refused([tensor("a", [11, 1], datatype)], binary, max_elements=10)
    assert message == "input 'a': shape [11, 1] spans 11 elements, over the 10-element limit"


@pytest.mark.parametrize("binary", [False, True])
def test_empty_tensors_up_to_the_cap_decode(binary):
    for shape in ([0, 10], [10, 0], [0, 2, 5], [0, 0]):
        (decoded,) = decode_inputs([tensor("x", shape)], binary, max_elements=10).inputs
        assert decoded.data.shape == tuple(shape)


@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize(
    "shape", [[0, 2**62], [2**62, 0], [0, 3, 2**62], [0, 11], [2**63 - 1, 0, 2]]
)
def test_empty_tensors_with_absurd_dimensions_are_refused(binary, shape):
    """numpy cannot even describe these ("array is too big"): refused before it is asked."""
    extent = math.prod(dim for dim in shape if dim)
    assert refused([tensor("x", shape)], binary, max_elements=10) == (
        f"input 'x': shape {shape} spans {extent} elements (not counting its zero dimensions), "
        "over the 10-element limit"
    )


@pytest.mark.parametrize(
    ("data", "what"),
    [
        (["hello", 1], "element 1 is a number"),
        (["hello", 2.5], "element 1 is a number"),
        ([True, "hello"], "element 0 is true/false"),
        (["hello", None], "element 1 is null"),
        (["hello", {"a": "b"}], "element 1 is an object"),
        ([["a", "b"], ["c"]], "element 0 is a list (the data is ragged or nested too deep)"),
        (["a", ["b"]], "element 1 is a list (the data is ragged or nested too deep)"),
    ],
)
def test_json_bytes_elements_must_be_strings(data, what):
    body = orjson.dumps(
        {"inputs": [{"name": "t", "shape": [2], "datatype": "BYTES", "data": data}]}
    )
    with pytest.raises(InvalidInputError) as error:
        decode(body)
    assert str(error.value) == f"input 't': BYTES data must be strings; {what}"
