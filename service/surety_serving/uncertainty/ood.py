"""The served OOD judgement: a set of detectors, each score turned into a conformal p-value
against the detector's own calibration scores, combined by their minimum, and the minimum itself
turned into a p-value against held-out calibration inputs, so that the combination stays valid
(docs/uncertainty.md). The candidates calibration chooses the set from are :func:`candidates`;
the choice is offline, :mod:`surety_serving.uncertainty.selection`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from surety_serving.uncertainty import artifacts
from surety_serving.uncertainty.base import TEXTS, ArtifactError, FloatArray
from surety_serving.uncertainty.detectors import DETECTORS, Detector

STEM = "ood"

#: The roles a detector can fill in a model's set, in the set's order: class-conditional
#: feature density (semantic shift), the classifier's own confidence, how typical the input is
#: as a whole (its tokens, its nearest training features: covariate shift), and a
#: discriminator of the training inputs against background text (genre).
ROLES = ("semantic", "confidence", "density", "genre")
#: The semantic detectors whose standardised score is answered as ``mahalanobis_score``.
MAHALANOBIS_METHODS = ("mahalanobis", "relative_mahalanobis", "tap_ensemble")


@dataclass(frozen=True)
class Candidate:
    """A detector calibration may put in the set: its role, method and parameters."""

    role: str
    method: str
    params: dict[str, Any]


def candidates(
    taps: Sequence[str],
    token_score: str | None,
    texts: bool = False,
    background: Sequence[str | Path] = (),
) -> list[Candidate]:
    """What calibration tries, by role; within a role the first is the choice without
    validation data, and the earlier wins a tie. ``texts``: the model reads text (the
    detectors of the request's text join); ``background``: JSONL files of background text for
    the genre detector."""
    if not taps:
        raise ValueError("candidates need at least one tap")
    last = taps[-1]
    specs: list[Candidate] = []
    # dict.fromkeys: the middle tap is the last one when a model has one or two taps.
    for tap in dict.fromkeys([last, taps[len(taps) // 2]]):
        specs += [
            Candidate("semantic", "mahalanobis", {"tap": tap, "normalise": n})
            for n in (True, False)
        ]
    specs += [
        Candidate("semantic", "relative_mahalanobis", {"tap": last, "normalise": True}),
        Candidate("semantic", "tap_ensemble", {"taps": list(taps), "normalise": True}),
        Candidate("confidence", "energy", {}),
        Candidate("confidence", "msp", {}),
    ]
    if token_score:
        specs.append(Candidate("density", "token_density", {"output": token_score}))
    specs += [Candidate("density", "knn", {"tap": last, "k": k}) for k in (10, 1)]
    if texts:
        specs += [Candidate("density", "char_density", {"order": n}) for n in (5, 7)]
    if texts and background:
        specs.append(Candidate("genre", "genre", {"background": [str(p) for p in background]}))
    return specs


def conformal_p_values(reference: NDArray[np.float64], scores: FloatArray) -> NDArray[np.float64]:
    """Left-tail conformal p-values against sorted in-distribution scores:
    p(s) = (1 + #{r ≤ s}) / (n + 1). For an input exchangeable with the reference inputs,
    P(p ≤ t) ≤ t. A non-finite score (non-finite model outputs) gets 0: never typical."""
    scores = np.asarray(scores, dtype=np.float64)
    counts = np.searchsorted(reference, scores, side="right")
    p = (1.0 + counts) / (len(reference) + 1.0)
    return np.where(np.isfinite(scores), p, 0.0)


@dataclass(frozen=True)
class Member:
    """One detector of the set: its calibration scores and their standardisation."""

    role: str
    detector: Detector
    reference: NDArray[np.float64]  # sorted scores of the reference calibration inputs
    mean: float
    std: float

    @property
    def name(self) -> str:
        return self.detector.method

    def save(self, directory: Path) -> None:
        meta = {
            "role": self.role,
            "method": self.name,
            "params": self.detector.params(),
            "mean": self.mean,
            "std": self.std,
        }
        artifacts.write(directory, f"{STEM}-{self.name}", self.detector.arrays(), meta)

    @classmethod
    def load(cls, directory: Path, name: str, reference: NDArray[np.float64]) -> Member:
        stem = f"{STEM}-{name}"
        arrays, meta = artifacts.read(directory, stem)
        json_path = directory / f"{stem}.json"
        method = meta.get("method")
        if method != name or method not in DETECTORS:
            raise ArtifactError(f"{json_path}: method {method!r} is not the registered {name!r}")
        try:
            role, params = meta["role"], meta["params"]
            mean, std = float(meta["mean"]), float(meta["std"])
            if role not in ROLES:
                raise ValueError(f"unknown role {role!r}")
            if not (np.isfinite([mean, std]).all() and std > 0):
                raise ValueError(f"mean {mean}, std {std}")
            if not isinstance(params, dict):
                raise TypeError("params must be an object")
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{json_path}: bad field ({exc})") from exc
        detector = DETECTORS[method].restore(params, arrays, directory / f"{stem}.npz")
        return cls(role, detector, reference, mean, std)


@dataclass(frozen=True)
class ServedOOD:
    """The detector set, the held-out minimum p-values that calibrate its combination, and
    the record of how the set was chosen."""

    members: tuple[Member, ...]
    min_reference: NDArray[np.float64]  # sorted minimum p-values of held-out calibration inputs
    num_classes: int  # of the model it was fitted for
    selection: dict[str, Any]  # JSON: the rule, the candidates and their validation AUROCs

    @cached_property
    def names(self) -> tuple[str, ...]:
        return tuple(member.name for member in self.members)

    @cached_property
    def mahalanobis(self) -> Member:
        return next(m for m in self.members if m.name in MAHALANOBIS_METHODS)

    @cached_property
    def _encoded_names(self) -> NDArray[Any]:
        """``names`` as the BYTES elements ``ood_detectors`` is picked from, built once."""
        return np.array([name.encode() for name in self.names], dtype=object)

    def scores(self, features: Mapping[str, Any], logits: FloatArray) -> NDArray[np.float64]:
        """Every member's raw score [B, K]."""
        return np.stack([m.detector.score(features, logits) for m in self.members], axis=1)

    def p_values(self, scores: NDArray[np.float64]) -> NDArray[np.float64]:
        """Every member's conformal p-value [B, K] of raw scores [B, K]."""
        return np.stack(
            [conformal_p_values(m.reference, scores[:, k]) for k, m in enumerate(self.members)],
            axis=1,
        )

    def combined(self, p_values: NDArray[np.float64]) -> NDArray[np.float64]:
        """The minimum over members, as a p-value against the held-out minima: the minimum of
        K valid p-values is not one itself, but its rank among minima of exchangeable inputs
        is."""
        return conformal_p_values(self.min_reference, p_values.min(axis=1))

    def evaluate(
        self, features: Mapping[str, Any], logits: FloatArray, level: float
    ) -> dict[str, NDArray[Any]]:
        """Per row: ``ood_p_value``, ``ood`` (below ``level``), ``ood_detectors`` (the member with
        the lowest p-value), ``mahalanobis_score`` (the Mahalanobis member's standardised
        score) and ``ood_detector_p_values`` [B, K] (members in ``names`` order)."""
        raw = self.scores(features, logits)
        p_values = self.p_values(raw)
        combined = self.combined(p_values)
        semantic = self.members.index(self.mahalanobis)
        standardised = (raw[:, semantic] - self.mahalanobis.mean) / self.mahalanobis.std
        return {
            "ood_p_value": combined.astype(np.float32),
            "ood": combined < level,
            "ood_detectors": self._encoded_names[p_values.argmin(axis=1)],
            "mahalanobis_score": standardised.astype(np.float32),
            "ood_detector_p_values": p_values.astype(np.float32),
        }

    def save(self, directory: Path) -> None:
        """Write `ood.npz` (reference scores, held-out minima), `ood.json` (the set), and one
        `ood-<method>.{npz,json}` per member."""
        arrays = {f"reference.{m.name}": m.reference for m in self.members}
        meta = {
            "members": list(self.names),
            "num_classes": self.num_classes,
            "selection": self.selection,
        }
        artifacts.write(directory, STEM, {**arrays, "min_reference": self.min_reference}, meta)
        for member in self.members:
            member.save(directory)

    @classmethod
    def load(cls, directory: Path) -> ServedOOD:
        """Read what `save` wrote; ArtifactError naming the file when anything is wrong."""
        arrays, meta = artifacts.read(directory, STEM)
        json_path, npz_path = directory / f"{STEM}.json", directory / f"{STEM}.npz"
        try:
            names, num_classes, selection = meta["members"], meta["num_classes"], meta["selection"]
            if not names or not all(isinstance(name, str) for name in names):
                raise ValueError(f"members {names!r} must be a non-empty list of names")
            if len(set(names)) != len(names):
                raise ValueError(f"members {names!r} repeat a detector")
            if not isinstance(num_classes, int) or isinstance(num_classes, bool):
                raise TypeError(f"num_classes {num_classes!r} is not an integer")
            if not isinstance(selection, dict):
                raise TypeError("selection must be an object")
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{json_path}: bad field ({exc})") from exc
        members = tuple(
            Member.load(directory, name, _sorted(arrays, npz_path, f"reference.{name}"))
            for name in names
        )
        if not any(m.name in MAHALANOBIS_METHODS for m in members):
            raise ArtifactError(
                f"{json_path}: no Mahalanobis detector ({', '.join(MAHALANOBIS_METHODS)}) "
                f"among the members {names}"
            )
        return cls(members, _sorted(arrays, npz_path, "min_reference"), num_classes, selection)

    def check_model(self, widths: Mapping[str, int], num_classes: int) -> None:
        """ArtifactError unless every model output a member reads is an output of the width it
        was fitted on, and the model has the classes it was fitted for."""
        for member in self.members:
            for name, width in member.detector.inputs().items():
                if name == TEXTS:  # not a model output: the request's texts
                    continue
                if name not in widths:
                    raise ArtifactError(
                        f"{STEM}: {member.name} reads {name!r}, which is not an output of the model"
                    )
                if widths[name] != width:
                    raise ArtifactError(
                        f"{STEM}: {name!r} has {widths[name]} features in the model, "
                        f"{width} in the artifact"
                    )
        if num_classes != self.num_classes:
            raise ArtifactError(
                f"{STEM}: {self.num_classes} classes in the artifact, {num_classes} in the model"
            )

    def reads_texts(self) -> bool:
        """Whether a member reads the request's texts."""
        return any(TEXTS in m.detector.inputs() for m in self.members)


def _sorted(arrays: Mapping[str, NDArray[Any]], path: Path, key: str) -> NDArray[np.float64]:
    """A reference array: one-dimensional, finite, non-empty and sorted."""
    values = np.asarray(artifacts.require(arrays, path, key, (None,)), dtype=np.float64)
    if len(values) == 0 or not np.isfinite(values).all() or np.any(np.diff(values) < 0):
        raise ArtifactError(f"{path}: array {key!r} must be non-empty, finite and sorted")
    return values
