"""TwoPassSoftmax against ORT's own Softmax, numpy, and the copy bandwidth of this machine.

Run: ``.venv/bin/python bench/softmax.py`` (shape table, intra-op threads 1 and 2), or
``.venv/bin/python bench/softmax.py --crossover`` (two-pass vs reload by row length: the
measurement that sets kTwoPassMinRowLength in kernels/src/softmax/f32_softmax_row.h).

Method: single-node models (ORT Softmax opset 13 axis -1; ai.surety::TwoPassSoftmax), identical
session options (intra-op threads, spinning on, sequential execution), inputs and preallocated
outputs bound once through IOBinding; warm-ups, then >= 30 interleaved timed runs; medians and
ratios of medians. The copy bandwidth is measured in the same run, interleaved with the rest:
numpy ``copyto`` of the same bytes (one thread) and ORT ``Identity`` through IOBinding.

Bytes model (per element, with write-allocate): a copy moves 12 B (read, RFO, write); the
two-pass softmax at best 16 B (two reads, RFO, write). "bound" is the two-pass time at the copy
bandwidth, 16/12 of the copy time; "of bound" = bound / measured time.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from _timing import Timing, interleaved  # bench/ is the script's directory
from onnx import TensorProto, helper

from surety_serving import kernels

SHAPES: list[tuple[int, int]] = [(16, 1_048_576), (256, 32_000), (6144, 512), (1, 10)]
CROSSOVER_LENGTHS = [256, 1024, 4096, 8192, 16_384, 32_768, 65_536, 131_072, 262_144, 1_048_576]


def _model(node: onnx.NodeProto, *, custom: bool) -> bytes:
    graph = helper.make_graph(
        [node],
        "bench",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    opsets = [helper.make_opsetid("", 13)]
    if custom:
        opsets.append(helper.make_opsetid(kernels.DOMAIN, kernels.OPSET_VERSION))
    serialized: bytes = helper.make_model(graph, opset_imports=opsets).SerializeToString()
    return serialized


def ort_softmax_model() -> bytes:
    return _model(helper.make_node("Softmax", ["X"], ["Y"], axis=-1), custom=False)


def identity_model() -> bytes:
    return _model(helper.make_node("Identity", ["X"], ["Y"]), custom=False)


def two_pass_model(algorithm: int = 0) -> bytes:
    node = helper.make_node("TwoPassSoftmax", ["X"], ["Y"], domain=kernels.DOMAIN)
    node.attribute.append(helper.make_attribute("algorithm", algorithm))
    return _model(node, custom=True)


def session(model: bytes, threads: int, *, spinning: bool = True) -> ort.InferenceSession:
    """A session with the kernels registered; ``spinning``: idle intra-op threads spin-wait."""
    options = ort.SessionOptions()
    options.register_custom_ops_library(kernels.library_path())
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def bound_runner(sess: ort.InferenceSession, x: npt.NDArray[np.float32]) -> Callable[[], None]:
    """One Run through IOBinding, with X and a preallocated Y bound once."""
    binding = sess.io_binding()
    x_value = ort.OrtValue.ortvalue_from_numpy(x)
    y_value = ort.OrtValue.ortvalue_from_numpy(np.empty_like(x))
    binding.bind_ortvalue_input("X", x_value)
    binding.bind_ortvalue_output("Y", y_value)
    bound = (binding, x_value, y_value)  # the closure keeps the bound values alive

    def run() -> None:
        sess.run_with_iobinding(bound[0])

    return run


def numpy_softmax(x: npt.NDArray[np.float32], out: npt.NDArray[np.float32]) -> None:
    np.subtract(x, x.max(axis=-1, keepdims=True), out=out)
    np.exp(out, out=out)
    out /= out.sum(axis=-1, keepdims=True)


def inputs(rows: int, length: int, seed: int = 0) -> npt.NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((rows, length), dtype=np.float32) * 4.0).astype(np.float32)


def runs_for(elements: int) -> int:
    return 200 if elements < 100_000 else 30


def shape_table(threads_list: list[int]) -> list[str]:
    lines = [
        "| shape | threads | TwoPassSoftmax | ORT Softmax | numpy | copy (numpy) | "
        "vs ORT | vs numpy | GB/s (16 B/elem) | copy GB/s (12 B/elem) | of bound |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rows, length in SHAPES:
        x = inputs(rows, length)
        y = np.empty_like(x)
        copy_out = np.empty_like(x)
        elements = x.size
        for threads in threads_list:
            ours = bound_runner(session(two_pass_model(), threads), x)
            theirs = bound_runner(session(ort_softmax_model(), threads), x)
            identity = bound_runner(session(identity_model(), threads), x)
            contenders: dict[str, Callable[[], object]] = {
                "ours": ours,
                "ort": theirs,
                "numpy": functools.partial(numpy_softmax, x, y),
                "copy": functools.partial(np.copyto, copy_out, x),
                "identity": identity,
            }
            t = interleaved(contenders, warmup=5, runs=runs_for(elements))
            lines.append(format_row(rows, length, threads, t, elements))
            print(lines[-1], flush=True)
    return lines


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms" if seconds >= 1e-4 else f"{seconds * 1e6:.1f} µs"


def format_row(rows: int, length: int, threads: int, t: dict[str, Timing], elements: int) -> str:
    ours = t["ours"].median
    copy = min(t["copy"].median, t["identity"].median)
    gbs = 16 * elements / ours / 1e9
    copy_gbs = 12 * elements / copy / 1e9
    bound = copy * 16 / 12
    return (
        f"| [{rows}, {length}] | {threads} | {_ms(ours)} | {_ms(t['ort'].median)} | "
        f"{_ms(t['numpy'].median)} | {_ms(copy)} | {t['ort'].median / ours:.2f}x | "
        f"{t['numpy'].median / ours:.2f}x | {gbs:.1f} | {copy_gbs:.1f} | {bound / ours:.0%} |"
    )


def crossover(threads_list: list[int], total_elements: int) -> list[str]:
    lines = [
        f"Rows of D elements, {total_elements:,} elements in all (out of L3), "
        "median time of algorithm=1 (two-pass) / algorithm=2 (reload); < 1 means two-pass wins.",
        "",
        "| D | rows | threads | two-pass | reload | two-pass / reload |",
        "|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    for length in CROSSOVER_LENGTHS:
        rows = max(1, total_elements // length)
        x = inputs(rows, length)
        for threads in threads_list:
            two = bound_runner(session(two_pass_model(1), threads), x)
            reload = bound_runner(session(two_pass_model(2), threads), x)
            t = interleaved({"two": two, "reload": reload}, warmup=3, runs=30)
            ratio = t["two"].median / t["reload"].median
            lines.append(
                f"| {length:,} | {rows} | {threads} | {_ms(t['two'].median)} | "
                f"{_ms(t['reload'].median)} | {ratio:.3f} |"
            )
            print(lines[-1], flush=True)
    return lines


def environment() -> str:
    info = [
        f"ISA path: {kernels.isa()}",
        f"onnxruntime {ort.__version__}, numpy {np.__version__}, "
        f"Python {platform.python_version()}",
        f"CPU: {cpu_name()}, {os.cpu_count()} logical CPUs",
    ]
    return "\n".join(info)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--crossover", action="store_true", help="two-pass vs reload by D")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--total-elements", type=int, default=16 * 1_048_576, help="crossover tensor size"
    )
    args = parser.parse_args(argv)
    ctypes.CDLL(kernels.library_path())  # fail early if the library is not built
    print(environment(), flush=True)
    print(flush=True)
    if args.crossover:
        crossover(args.threads, args.total_elements)
    else:
        shape_table(args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
