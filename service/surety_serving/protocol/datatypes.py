"""The OIP datatypes and their numpy equivalents, in one table."""

from __future__ import annotations

from typing import Literal

import numpy as np

Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
    "FP16", "FP32", "FP64", "BYTES",
]  # fmt: skip

#: Little-endian numpy dtypes, as the binary extension requires; BYTES holds Python bytes.
NUMPY_DTYPES: dict[str, np.dtype[np.generic]] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
    "BYTES": np.dtype(object),
}

#: ONNX tensor element types (as ORT names them) that each OIP datatype stands for.
ORT_TYPES: dict[str, str] = {
    "BOOL": "tensor(bool)",
    "UINT8": "tensor(uint8)",
    "UINT16": "tensor(uint16)",
    "UINT32": "tensor(uint32)",
    "UINT64": "tensor(uint64)",
    "INT8": "tensor(int8)",
    "INT16": "tensor(int16)",
    "INT32": "tensor(int32)",
    "INT64": "tensor(int64)",
    "FP16": "tensor(float16)",
    "FP32": "tensor(float)",
    "FP64": "tensor(double)",
    "BYTES": "tensor(string)",
}

#: numpy kinds accepted in JSON data for each kind of non-BYTES datatype (ints may feed floats);
#: BYTES data is checked element by element, as numpy turns numbers into strings.
JSON_KINDS: dict[str, str] = {"b": "b", "u": "iu", "i": "iu", "f": "iuf"}


def datatype_of(array: np.ndarray) -> str:
    """The OIP datatype of a numpy array (object and string arrays are BYTES)."""
    if array.dtype.kind in "OUS":
        return "BYTES"
    for name, dtype in NUMPY_DTYPES.items():
        if name != "BYTES" and dtype == array.dtype.newbyteorder("<"):
            return name
    raise TypeError(f"no OIP datatype for numpy dtype {array.dtype}")
