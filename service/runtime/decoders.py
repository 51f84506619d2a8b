"""Input decoding, one step per model input kind: request tensors in, validated feeds out.

Decoding happens before a request joins a batch, so anything it rejects fails that request alone.
Text models will add a decoder here that tokenizes a BYTES input into the encoder's feeds.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from service.errors import InvalidInputError
from service.runtime.config import InputSpec
from service.runtime.session import Feeds
from service.runtime.types import Tensor

Decoder = Callable[[InputSpec, Tensor], Feeds]


def decode_tensor(spec: InputSpec, tensor: Tensor) -> Feeds:
    """A numeric tensor fed as given: datatype, shape, finiteness and range are checked."""
    if tensor.datatype != spec.datatype:
        raise InvalidInputError(
            f"input '{spec.name}' must be {spec.datatype}, got {tensor.datatype}"
        )
    data = tensor.data
    shape = list(data.shape)
    if len(shape) != len(spec.shape) or any(
        want not in (-1, got) for want, got in zip(spec.shape, shape, strict=True)
    ):
        raise InvalidInputError(f"input '{spec.name}' must have shape {spec.shape}, got {shape}")
    if data.dtype.kind == "f" and not np.isfinite(data).all():
        raise InvalidInputError(f"input '{spec.name}' holds NaN or infinite values")
    if spec.range is not None and data.size:
        low, high = spec.range
        if data.min() < low or data.max() > high:
            raise InvalidInputError(f"input '{spec.name}' values must lie in [{low:g}, {high:g}]")
    return {spec.name: data}


DECODERS: dict[str, Decoder] = {"tensor": decode_tensor}
