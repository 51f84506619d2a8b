"""An ONNX Runtime session with the ai.surety kernels, checked against the model's config."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from surety_serving import kernels
from surety_serving.errors import ConfigError
from surety_serving.protocol.datatypes import NUMPY_DTYPES, ORT_TYPES
from surety_serving.runtime.config import ModelConfig

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]


def session_options(intra_op_threads: int) -> ort.SessionOptions:
    """Options for a small shared machine: explicit thread counts and no spinning.

    Idle spinning threads burn the cores that the event loop and other sessions need; with
    several runs in flight (one per executor worker), intra-op threads would only oversubscribe.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.register_custom_ops_library(kernels.library_path())
    return options


class OnnxSession:
    """One ``InferenceSession`` for one model version; ``run`` is safe from several threads."""

    def __init__(self, path: Path, config: ModelConfig, intra_op_threads: int = 1) -> None:
        if not path.is_file():
            raise ConfigError(f"{path}: no such file")
        try:
            self.session = ort.InferenceSession(
                str(path), session_options(intra_op_threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises bare RuntimeError subclasses for bad models
            raise ConfigError(f"{path}: ONNX Runtime cannot load it: {exc}") from exc
        self.path = path
        self.inputs = {i.name: i for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self._check(config)

    def _check(self, config: ModelConfig) -> None:
        """The config must describe the graph: its outputs exist and every input gets fed."""
        graph_outputs = {o.name: o for o in self.session.get_outputs()}
        for spec in config.outputs:
            node = graph_outputs.get(spec.name)
            if node is None:
                raise ConfigError(
                    f"{self.path}: config.yaml output '{spec.name}' is not in the graph"
                )
            if node.type != ORT_TYPES[spec.datatype]:
                raise ConfigError(
                    f"{self.path}: output '{spec.name}' is {node.type} in the graph, "
                    f"{spec.datatype} in config.yaml"
                )
        # The graph inputs are the decoders' feeds (a text input becomes input_ids, ...).
        fed = {feed.name: feed.datatype for feed in config.feeds()}
        for name, node in self.inputs.items():
            if name not in fed:
                raise ConfigError(f"{self.path}: graph input '{name}' is not fed by config.yaml")
            if node.type != ORT_TYPES[fed[name]]:
                raise ConfigError(
                    f"{self.path}: input '{name}' is {node.type} in the graph, "
                    f"{fed[name]} in config.yaml"
                )
        for name in fed:
            if name not in self.inputs:
                raise ConfigError(f"{self.path}: config.yaml input '{name}' is not in the graph")

    def run(self, feeds: Feeds) -> Feeds:
        """Run every output; called from the inference executor's threads."""
        values = self.session.run(self.outputs, feeds)
        return dict(zip(self.outputs, values, strict=True))

    def warm_up(self, config: ModelConfig) -> float:
        """Run batches of one and of max_batch_size rows so first requests meet a warm arena.

        Returns the seconds it took.
        """
        start = time.perf_counter()
        for rows in sorted({1, config.batching.max_batch_size}):
            try:
                self.run(sample_feeds(config, rows))
            except Exception as exc:  # a graph that loads but cannot run is a broken entry
                raise ConfigError(f"{self.path}: warm-up run of {rows} rows failed: {exc}") from exc
        return time.perf_counter() - start


def sample_feeds(config: ModelConfig, rows: int) -> Feeds:
    """Valid feeds of ``rows`` rows: each input's lower bound (or zero), scale 1.

    Token feeds (text inputs, a judge's prompt) get one token of id 1 with attention 1 (an
    all-padding row is not a real input).
    """
    fills = {
        feed.name: spec.range[0] if spec.range is not None else 1 if spec.decoder == "text" else 0
        for spec in config.inputs
        for feed in spec.feeds()
    }
    feeds: Feeds = {}
    for feed in config.feeds():
        shape = [rows] + [1 if dim == -1 else dim for dim in feed.shape[1:]]
        fill = fills.get(feed.name, 1)  # the scale input, a judge's tokens
        feeds[feed.name] = np.full(shape, fill, dtype=NUMPY_DTYPES[feed.datatype])
    return feeds
