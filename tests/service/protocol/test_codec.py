"""The OIP codec over every datatype: JSON and binary requests, JSON and binary responses."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from service.errors import InvalidInputError
from service.protocol.codec import decode_request, encode_response
from service.protocol.datatypes import NUMPY_DTYPES, datatype_of
from service.runtime.types import InferRequest, InferResponse, RequestedOutput, Tensor

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
    (tensor,) = decode_request(json_request(datatype, array, nested)).inputs
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
    request = decode_request(header + blob, str(len(header)))
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
        decode_request(body)


@pytest.mark.parametrize(
    ("blob", "fragment"),
    [
        (b"\x05\x00\x00\x00ab", "BYTES element is truncated"),
        (b"\x05\x00", "BYTES element length is truncated"),
        (b"\x01\x00\x00\x00a", "shape [2] needs 2 values, data has 1"),
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
        decode_request(header + blob, str(len(header)))
