"""How calibration chooses a model's OOD detector set (offline; docs/uncertainty.md states it):

1. The calibration split is halved at random (seeded): the *reference* half gives each
   detector its conformal reference scores (and the standardisation of its score), the
   *held-out* half the minimum p-values that calibrate the combination.
2. Every candidate is fitted on the train split. In each role
   (:data:`~surety_serving.uncertainty.ood.ROLES`) the candidate with the highest mean AUROC of
   the reference half against the OOD-validation sets fills it; without validation sets, the
   role's first candidate.
3. The set is the semantic role's detector with the subset of the other roles whose minimum
   p-value (reference half against validation) has the highest mean AUROC (ties: fewer
   detectors); without validation sets, every role. The held-out half is not looked at before
   it calibrates the chosen set, so the combined p-value is valid.

Nothing here looks at evaluation sets: those stay for bench/uncertainty_eval.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import combinations
from typing import Any

import numpy as np
from numpy.typing import NDArray

from surety_serving.uncertainty.base import FeatureSet
from surety_serving.uncertainty.detectors import Detector, fit_detector
from surety_serving.uncertainty.evaluation import detection_metrics
from surety_serving.uncertainty.mahalanobis import standardisation
from surety_serving.uncertainty.ood import (
    MAHALANOBIS_METHODS,
    ROLES,
    Candidate,
    Member,
    ServedOOD,
    conformal_p_values,
)

__all__ = ["RULE_BEST", "RULE_FALLBACK", "halves", "select"]

RULE_BEST = (
    "per role, the highest mean AUROC of the reference half against the OOD-validation sets; "
    "then the subset of roles (with semantic) whose minimum p-value has the highest mean AUROC; "
    "ties: the earlier candidate, the fewer roles"
)
RULE_FALLBACK = "no OOD-validation set: every role, each filled by its first candidate"


def halves(rows: int, seed: int) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """The reference and held-out halves of ``rows`` calibration rows, seeded."""
    if rows < 4:
        raise ValueError(f"the calibration split needs at least 4 rows, has {rows}")
    order = np.random.default_rng(seed).permutation(rows)
    return np.sort(order[: rows // 2]), np.sort(order[rows // 2 :])


def _member(role: str, detector: Detector, reference_set: FeatureSet) -> Member:
    raw = detector.score(reference_set.features(), reference_set.logits)
    mean, std = standardisation(raw[:, None])
    return Member(role, detector, np.sort(raw), float(mean[0]), float(std[0]))


def _aurocs(
    in_scores: NDArray[np.float64], out: Mapping[str, NDArray[np.float64]]
) -> dict[str, float]:
    return {name: detection_metrics(in_scores, scores).auroc for name, scores in out.items()}


def select(
    train: FeatureSet,
    calibration: FeatureSet,
    validation_ood: Mapping[str, FeatureSet],
    specs: Sequence[Candidate],
    forced: str | None = None,
    seed: int = 0,
) -> ServedOOD:
    """The detector set chosen by the rule (this module's docstring), fitted and calibrated.
    ``forced`` restricts the semantic role to one method."""
    for name, ood in validation_ood.items():
        if len(ood.logits) == 0:
            raise ValueError(f"OOD-validation set {name!r} is empty")
    semantic = [c for c in specs if c.role == "semantic" and c.method in MAHALANOBIS_METHODS]
    if forced is not None:
        semantic = [c for c in semantic if c.method == forced]
        if not semantic:
            known = sorted({c.method for c in specs if c.role == "semantic"})
            raise ValueError(f"forced OOD method {forced!r} is not a semantic candidate ({known})")
    if not semantic:
        raise ValueError("no Mahalanobis candidate for the semantic role")
    eligible = [c for c in specs if c.role != "semantic" or c in semantic]
    reference_rows, held_out_rows = halves(len(calibration.labels), seed)
    reference, held_out = calibration.rows(reference_rows), calibration.rows(held_out_rows)

    records: list[dict[str, Any]] = []
    members: dict[str, Member] = {}
    for role in ROLES:
        best: tuple[float, Member] | None = None
        for candidate in (c for c in eligible if c.role == role):
            detector = fit_detector(train, reference, candidate.method, candidate.params)
            member = _member(role, detector, reference)
            record: dict[str, Any] = {
                "role": role,
                "method": candidate.method,
                "params": candidate.params,
            }
            if validation_ood:
                aurocs = _aurocs(
                    member.reference,
                    {n: detector.score(o.features(), o.logits) for n, o in validation_ood.items()},
                )
                mean_auroc = float(np.mean(list(aurocs.values())))
                record.update(auroc=aurocs, mean_auroc=mean_auroc)
                if best is None or mean_auroc > best[0]:
                    best = (mean_auroc, member)
            elif best is None:
                best = (0.0, member)
            records.append(record)
        if best is not None:
            members[role] = best[1]

    chosen, subsets = _choose_roles(members, reference, validation_ood)
    set_members = tuple(members[role] for role in chosen)
    held_out_p = _min_p(set_members, held_out)
    selection = {
        "rule": RULE_BEST if validation_ood else RULE_FALLBACK,
        "forced": forced,
        "validation_sets": list(validation_ood),
        "candidates": records,
        "role_subsets": subsets,
        "members": [m.name for m in set_members],
        "reference_rows": len(reference_rows),
        "held_out_rows": len(held_out_rows),
    }
    return ServedOOD(set_members, np.sort(held_out_p), calibration.num_classes, selection)


def _p_values(member: Member, rows: FeatureSet) -> NDArray[np.float64]:
    """The member's conformal p-values of ``rows``."""
    return conformal_p_values(member.reference, member.detector.score(rows.features(), rows.logits))


def _min_p(members: Sequence[Member], rows: FeatureSet) -> NDArray[np.float64]:
    """The minimum over members of their conformal p-values on ``rows``."""
    return np.asarray(np.min([_p_values(m, rows) for m in members], axis=0), dtype=np.float64)


def _choose_roles(
    members: Mapping[str, Member],
    reference: FeatureSet,
    validation_ood: Mapping[str, FeatureSet],
) -> tuple[tuple[str, ...], list[dict[str, Any]]]:
    """The roles of the set and, with validation sets, each subset's mean AUROC. In-distribution
    here is the reference half: the held-out half must stay unseen until it calibrates the
    chosen set's minimum."""
    others = [role for role in ROLES if role in members and role != "semantic"]
    if not validation_ood:
        return ("semantic", *others), []
    # Each member scores each set once; a subset's minimum is taken over those p-values.
    on_reference = {role: _p_values(m, reference) for role, m in members.items()}
    on_validation = {
        role: {name: _p_values(m, ood) for name, ood in validation_ood.items()}
        for role, m in members.items()
    }
    subsets: list[dict[str, Any]] = []
    best: tuple[float, tuple[str, ...]] | None = None
    for size in range(len(others) + 1):  # fewer roles first: they keep a tie
        for extra in combinations(others, size):
            roles = ("semantic", *extra)
            aurocs = _aurocs(
                np.min([on_reference[role] for role in roles], axis=0),
                {
                    name: np.min([on_validation[role][name] for role in roles], axis=0)
                    for name in validation_ood
                },
            )
            mean_auroc = float(np.mean(list(aurocs.values())))
            subsets.append({"roles": list(roles), "auroc": aurocs, "mean_auroc": mean_auroc})
            if best is None or mean_auroc > best[0]:
                best = (mean_auroc, roles)
    assert best is not None
    return best[1], subsets
