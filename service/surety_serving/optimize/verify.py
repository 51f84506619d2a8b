"""The drift check: the original and the rewritten model run in ONNX Runtime (with the ai.surety
library) on the same inputs, compared output by output."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from surety_serving.optimize.options import OptimizeError

#: Sizes given to symbolic (or unknown) dimensions of generated inputs: the first axis is taken
#: for the batch, every other for a sequence long enough to pad and to exceed small windows.
BATCH = 2
SEQUENCE = 16
#: The (batch, sequence) sizes :func:`probe` runs at: two, each size different, so that a
#: dimension equal in both is taken for a constant of the model (heads, head size).
PROBE_SIZES = ((BATCH, SEQUENCE), (BATCH + 1, SEQUENCE + 3))
#: Graph inputs whose name holds this are taken for attention masks: ones, with trailing zeros.
MASK_MARK = "mask"
#: Ops an embedding lookup's indices may pass through before the Gather.
INDEX_PASSTHROUGH = ("Cast", "Identity", "Unsqueeze", "Reshape")

Feeds = Mapping[str, np.ndarray]


def _vocabulary(model: onnx.ModelProto, name: str) -> int | None:
    """The row count of the smallest embedding table ``name`` indexes (through casts and
    reshapes), or None when it indexes none."""
    tables = {t.name: t for t in model.graph.initializer}
    names, sizes = {name}, []
    for node in model.graph.node:
        if node.op_type in INDEX_PASSTHROUGH and node.input and node.input[0] in names:
            names.update(node.output)
        elif node.op_type == "Gather" and node.input[1] in names and node.input[0] in tables:
            sizes.append(int(tables[node.input[0]].dims[0]))
    return min(sizes, default=None)


def _mask(shape: list[int]) -> np.ndarray:
    """Ones, with a quarter of the sequence zeroed at the end of every other row."""
    mask = np.ones(shape)
    if len(shape) == 2:
        mask[1::2, shape[1] - shape[1] // 4 :] = 0
    return mask


def sample_inputs(
    model: onnx.ModelProto, seed: int = 0, *, batch: int = BATCH, sequence: int = SEQUENCE
) -> dict[str, np.ndarray]:
    """Random inputs for every graph input without a default: integer indices into the
    embedding table they feed (zeros when there is none), masks of ones with trailing zeros,
    floats from a standard normal. Symbolic dimensions are ``batch`` on the first axis and
    ``sequence`` elsewhere."""
    rng = np.random.default_rng(seed)
    defaults = {t.name for t in model.graph.initializer}
    sizes: dict[str, int] = {}
    feeds: dict[str, np.ndarray] = {}
    for value in model.graph.input:
        if value.name in defaults:
            continue
        if not value.type.HasField("tensor_type"):
            raise OptimizeError(f"input '{value.name}' is no tensor: pass sample inputs")
        tensor = value.type.tensor_type
        shape = []
        for axis, dim in enumerate(tensor.shape.dim):
            if dim.HasField("dim_value"):
                shape.append(int(dim.dim_value))
            else:
                default = batch if axis == 0 else sequence
                # A named dimension takes one size everywhere it appears; an unnamed one its own.
                shape.append(sizes.setdefault(dim.dim_param, default) if dim.dim_param else default)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)
        vocabulary = _vocabulary(model, value.name)
        if MASK_MARK in value.name.lower():
            array = _mask(shape)
        elif np.issubdtype(dtype, np.integer):
            array = rng.integers(0, vocabulary or 1, size=shape)
        elif dtype == np.bool_:
            array = np.ones(shape)
        else:
            array = rng.standard_normal(shape)
        feeds[value.name] = array.astype(dtype)
    return feeds


def _run(model: onnx.ModelProto, samples: Sequence[Feeds], which: str) -> list[list[np.ndarray]]:
    import onnxruntime as ort

    from surety_serving.runtime.session import session_options

    # ORT's default thread count (0): a check runs alone; errors only (a rewritten graph's
    # warnings are the pass's to report).
    options = session_options(0)
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
        return [[np.asarray(v) for v in session.run(None, dict(feeds))] for feeds in samples]
    # onnxruntime's errors derive from Exception alone, one class per status code.
    except Exception as error:
        raise OptimizeError(f"the {which} model does not run in onnxruntime: {error}") from error


def probe(model: onnx.ModelProto, values: Mapping[str, int]) -> dict[str, list[np.ndarray]]:
    """Intermediate ``values`` (name → ONNX element type) of ``model`` on generated inputs, once
    per size in PROBE_SIZES: what shape inference leaves symbolic (a head count behind a
    Reshape to -1) can be read off, and a dimension that moves with the inputs' sizes tells
    itself apart from a constant one."""
    names = list(values)
    probing = onnx.ModelProto()
    probing.CopyFrom(model)
    del probing.graph.output[:]
    probing.graph.output.extend(
        onnx.helper.make_tensor_value_info(name, values[name], None) for name in names
    )
    samples = [sample_inputs(model, batch=b, sequence=s) for b, s in PROBE_SIZES]
    runs = _run(probing, samples, "original")
    return {name: [run[i] for run in runs] for i, name in enumerate(names)}


def difference(expected: np.ndarray, actual: np.ndarray) -> float:
    """max |actual − expected|: 0 where both agree (the same infinity, both NaN), inf where the
    shapes differ or only one side is NaN or infinite."""
    if expected.shape != actual.shape:
        return float("inf")
    a, b = expected.astype(np.float64), actual.astype(np.float64)
    with np.errstate(invalid="ignore"):
        gap = np.where((a == b) | (np.isnan(a) & np.isnan(b)), 0.0, np.abs(a - b))
    return float(np.nan_to_num(gap, nan=np.inf).max(initial=0.0))


def magnitude(output: np.ndarray) -> float:
    """The scale a drift is measured against: max(1, the largest finite |element|). Outputs of
    unit size (probabilities, features) keep an absolute bound; outputs in the hundreds (a
    Mahalanobis distance, raw logits) get a relative one, since float32 rounding grows with them."""
    finite = np.abs(output[np.isfinite(output)].astype(np.float64))
    return max(1.0, float(finite.max(initial=0.0)))


def drift(
    original: onnx.ModelProto, rewritten: onnx.ModelProto, samples: Sequence[Feeds]
) -> dict[str, float]:
    """Per output of ``original``: the largest |rewritten − original| / magnitude(original)
    over ``samples``."""
    names = [value.name for value in original.graph.output]
    before = _run(original, samples, "original")
    after = _run(rewritten, samples, "rewritten")
    return {
        name: max(
            difference(b[i], a[i]) / magnitude(b[i]) for b, a in zip(before, after, strict=True)
        )
        for i, name in enumerate(names)
    }
