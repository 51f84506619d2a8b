"""``surety fit-judge``: fit a judge's layer weights on STS-B's human similarity judgments.

docs/judge.md, "The modules in detail", states it in full.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from surety_serving.judge.correlation import spearman
from surety_serving.judge.extract import EXPORT_RECORD, layer_logits
from surety_serving.judge.lager import (
    append_constant_layer,
    center_logits,
    escore,
    expected_score,
    rescale,
    uniform_weights,
)
from surety_serving.runtime.config import CONFIG_FILE, load_config
from surety_serving.tasks.judge import JudgeConfig

log = logging.getLogger(__name__)

FIT_RECORD = "fit.json"
#: STS-B's label range; the judge's score values give the other end of the mapping.
STSB_RANGE = (0.0, 5.0)

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Fitted:
    """One method's weights ([L+1], [L+1, K] or with a bias row [L+2, K]) and what the graph
    does to the logits before the head (centring, a constant layer)."""

    weights: F64
    center: bool = False
    constant_layer: bool = False

    def scores(self, z: F64, values: F64) -> F64:
        """The expected scores the served graph gives for logits ``z`` [N, L+1, K]."""
        logits = center_logits(z) if self.center else z
        if self.constant_layer:
            logits = append_constant_layer(logits)
        scores, _ = expected_score(logits, self.weights, values)
        return scores


Fitter = Callable[[F64, F64, F64, F64, F64], Fitted]


def _uniform(z: F64, y: F64, zv: F64, yv: F64, values: F64) -> Fitted:
    del y, zv, yv, values
    return Fitted(uniform_weights(z.shape[1]))


def _lager(z: F64, y: F64, zv: F64, yv: F64, values: F64) -> Fitted:
    from surety_serving.judge.fitting import fit_lager

    return Fitted(fit_lager(z, y, zv, yv, values).weights)


def _signed_layer(z: F64, y: F64, zv: F64, yv: F64, values: F64) -> Fitted:
    from surety_serving.judge.fitting import fit_signed

    return Fitted(fit_signed(z, y, zv, yv, values, kind="layer").weights)


def _signed_layer_score(z: F64, y: F64, zv: F64, yv: F64, values: F64) -> Fitted:
    from surety_serving.judge.fitting import fit_signed

    fit = fit_signed(z, y, zv, yv, values, kind="layer_score", center=True)
    return Fitted(fit.weights, center=True)


def _probe(z: F64, y: F64, zv: F64, yv: F64, values: F64) -> Fitted:
    from surety_serving.judge.fitting import fit_probe

    return Fitted(fit_probe(z, y, zv, yv, values).weights, center=True, constant_layer=True)


METHODS: dict[str, Fitter] = {
    "uniform": _uniform,
    "lager": _lager,
    "signed_layer": _signed_layer,
    "signed_layer_score": _signed_layer_score,
    "probe": _probe,
}


@dataclass(frozen=True)
class StsbSample:
    """Labelled prompt rows, their labels on the judge's scale, and where they came from."""

    rows: list[dict[str, str]]
    labels: F64
    source: str


def stsb_sample(split: str, count: int | None, values: F64, seed: int = 0) -> StsbSample:
    """``count`` pairs of an STS-B split (all with None), in a fixed order for ``seed``."""
    from surety_serving.data.stsb import prepare_stsb, read_jsonl

    dataset = prepare_stsb()
    pairs = read_jsonl(dataset.split_paths()[split])
    order = np.random.default_rng(seed).permutation(len(pairs))
    chosen = [pairs[i] for i in order[: count if count is not None else len(pairs)]]
    rows = [{"text_a": p.text_a, "text_b": p.text_b} for p in chosen]
    target = (float(values.min()), float(values.max()))
    labels = rescale(np.array([p.score for p in chosen]), STSB_RANGE, target)
    source = f"STS-B {split}, {len(rows)} pairs drawn with seed {seed}"
    return StsbSample(rows, np.asarray(labels, dtype=np.float64), source)


def judge_scale(entry: Path) -> F64:
    """The score values of the judge at ``entry``; ValueError unless it is one that STS-B's
    pairs can fill (fields text_a and text_b)."""
    config = load_config(entry / CONFIG_FILE, JudgeConfig)
    spec = config.judge
    if spec is None:
        raise ValueError(f"{entry} is not a judge (task: {config.task})")
    if set(spec.fields) != {"text_a", "text_b"}:
        raise ValueError(f"STS-B fills the fields text_a and text_b; {entry} has {spec.fields}")
    return np.asarray(spec.score_values, dtype=np.float64)


def fit_judge(
    entry: Path,
    sample: StsbSample,
    *,
    validation_fraction: float = 0.25,
    methods: tuple[str, ...] = tuple(METHODS),
    version: int = 1,
) -> dict[str, Any]:
    """Fit on the first part of ``sample``, select on the rest, write the weights; returns the
    record (also in fit.json)."""
    from surety_serving.judge.graph import set_layer_weights

    started = time.monotonic()
    spec = load_config(entry / CONFIG_FILE, JudgeConfig).judge
    if spec is None:
        raise ValueError(f"{entry} is not a judge")
    values = np.asarray(spec.score_values, dtype=np.float64)
    z = layer_logits(entry, sample.rows, version=version).astype(np.float64)
    cut = round(len(z) * (1 - validation_fraction))
    fit_z, fit_y, val_z, val_y = z[:cut], sample.labels[:cut], z[cut:], sample.labels[cut:]
    log.info(f"fitting on {cut} STS-B train pairs, selecting on {len(val_z)}")
    validation = {"escore_final_layer": spearman(escore(val_z, values), val_y)}
    fitted: dict[str, Fitted] = {}
    for name in methods:
        fitted[name] = METHODS[name](fit_z, fit_y, val_z, val_y, values)
        validation[name] = spearman(fitted[name].scores(val_z, values), val_y)
        log.info(f"{name}: validation Spearman {validation[name]:+.3f}")
    best = max(methods, key=lambda name: (validation[name], -methods.index(name)))
    chosen = fitted[best]
    set_layer_weights(
        entry / str(version) / "model.onnx",
        chosen.weights,
        center=chosen.center,
        constant_layer=chosen.constant_layer,
    )
    record: dict[str, Any] = {
        "method": best,
        "centered": chosen.center,
        "constant_layer": chosen.constant_layer,
        "weights_shape": list(chosen.weights.shape),
        "pairs": {"fit": cut, "validation": len(val_z), "source": sample.source},
        "validation_spearman": validation,
        "seconds": round(time.monotonic() - started, 1),
    }
    (entry / FIT_RECORD).write_text(json.dumps(record, indent=2) + "\n", "utf-8")
    export_path = entry / EXPORT_RECORD
    export = json.loads(export_path.read_text("utf-8"))
    export["layer_weights"] = {"initializer": "layer_weights", "fitted": True, **record}
    export_path.write_text(json.dumps(export, indent=2) + "\n", "utf-8")
    log.info(f"kept {best} (validation Spearman {validation[best]:+.3f}); weights written")
    return record
