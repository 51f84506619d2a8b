"""The served OOD judgement: candidates by role, conformal p-values, the calibrated minimum, the
selection rule, the artifacts and the model checks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surety_serving.uncertainty.base import ArtifactError, FeatureSet
from surety_serving.uncertainty.ood import (
    ROLES,
    Candidate,
    ServedOOD,
    candidates,
    conformal_p_values,
)
from surety_serving.uncertainty.selection import RULE_BEST, RULE_FALLBACK, halves, select

from .test_detectors import TAPS, TOKEN, far_away, in_distribution

pytestmark = pytest.mark.unit


def test_candidates_are_the_documented_list() -> None:
    normalised_c = {"tap": "c", "normalise": True}
    assert candidates(TAPS, TOKEN) == [
        Candidate("semantic", "mahalanobis", normalised_c),
        Candidate("semantic", "mahalanobis", {"tap": "c", "normalise": False}),
        Candidate("semantic", "mahalanobis", {"tap": "b", "normalise": True}),
        Candidate("semantic", "mahalanobis", {"tap": "b", "normalise": False}),
        Candidate("semantic", "relative_mahalanobis", normalised_c),
        Candidate("semantic", "tap_ensemble", {"taps": ["a", "b", "c"], "normalise": True}),
        Candidate("confidence", "energy", {}),
        Candidate("confidence", "msp", {}),
        Candidate("density", "token_density", {"output": TOKEN}),
        Candidate("density", "knn", {"tap": "c", "k": 10}),
        Candidate("density", "knn", {"tap": "c", "k": 1}),
    ]
    assert {c.role for c in candidates(TAPS, TOKEN)} <= set(ROLES)


@pytest.mark.parametrize("taps", [["only"], ["early", "late"]])
def test_candidates_are_not_repeated_when_the_middle_tap_is_the_last(taps: list[str]) -> None:
    specs = candidates(taps, None)
    assert len({json.dumps([c.method, c.params]) for c in specs}) == len(specs) == 8
    assert {c.params.get("tap") for c in specs if c.method == "mahalanobis"} == {taps[-1]}
    assert "token_density" not in {c.method for c in specs}


def test_conformal_p_values_count_the_reference_at_or_below() -> None:
    reference = np.array([1.0, 2.0, 2.0, 5.0])
    scores = np.array([0.0, 1.0, 2.0, 4.9, 5.0, 9.0, np.nan, -np.inf, np.inf])
    p = conformal_p_values(reference, scores)
    # (1 + #{r ≤ s}) / (n + 1), n = 4; a non-finite score is never typical.
    np.testing.assert_array_equal(p, [0.2, 0.4, 0.8, 0.8, 1.0, 1.0, 0.0, 0.0, 0.0])


def test_conformal_p_values_are_valid_for_exchangeable_inputs(rng: np.random.Generator) -> None:
    # Over draws of the reference and the input alike, P(p ≤ t) = ⌊t(n + 1)⌋ / (n + 1) ≤ t.
    # Many references, few inputs each: the estimate's error is about the binomial one.
    draws = [
        conformal_p_values(np.sort(rng.normal(size=99)), rng.normal(size=5)) for _ in range(8000)
    ]
    p = np.concatenate(draws)
    for t in (0.01, 0.05, 0.1, 0.5):
        expected = np.floor(t * 100) / 100
        assert abs(np.mean(p <= t) - expected) < 4 * np.sqrt(t * (1 - t) / len(p)), t


def test_halves_split_every_row_once_and_depend_on_the_seed() -> None:
    a, b = halves(11, seed=0)
    assert sorted([*a, *b]) == list(range(11)) and len(a) == 5
    assert not np.array_equal(halves(11, seed=1)[0], a)
    np.testing.assert_array_equal(halves(11, seed=0)[0], a)
    with pytest.raises(ValueError, match="at least 4 rows"):
        halves(3, seed=0)


def shifted(base: FeatureSet, name: str, offset: float) -> FeatureSet:
    """base with one output moved off the in-distribution data, everything else untouched."""
    taps = dict(base.taps)
    taps[name] = taps[name] + offset
    return replace(base, taps=taps)


SPECS = [
    Candidate("semantic", "mahalanobis", {"tap": "a", "normalise": False}),
    Candidate("semantic", "mahalanobis", {"tap": "c", "normalise": False}),
    Candidate("confidence", "energy", {}),
    Candidate("confidence", "msp", {}),
    Candidate("density", "token_density", {"output": TOKEN}),
]


def test_each_role_is_filled_by_its_best_candidate_on_validation(rng: np.random.Generator) -> None:
    train, calibration = in_distribution(rng, 200), in_distribution(rng, 200)
    # Tap c moves (only the detector on c sees it in the semantic role) and so does the
    # token score.
    validation = {"shifted": shifted(shifted(in_distribution(rng, 100), "c", 8.0), TOKEN, 8.0)}
    served = select(train, calibration, validation, SPECS)
    selection = served.selection
    assert selection["rule"] == RULE_BEST and selection["validation_sets"] == ["shifted"]
    semantic = served.members[0]
    assert (semantic.role, semantic.detector.params()) == ("semantic", SPECS[1].params)
    records = selection["candidates"]
    assert [(r["role"], r["method"], r["params"]) for r in records] == [
        (c.role, c.method, c.params) for c in SPECS
    ]
    assert records[1]["mean_auroc"] > 0.99 > 0.75 > records[0]["mean_auroc"]
    # Both the semantic and the density detector separate perfectly: the fewer roles win the tie.
    assert served.names == ("mahalanobis",)
    subsets = {tuple(s["roles"]): s["mean_auroc"] for s in selection["role_subsets"]}
    assert subsets[("semantic",)] == 1.0 and ("semantic", "density") in subsets


def test_a_role_joins_the_set_when_it_sees_what_the_others_miss(rng: np.random.Generator) -> None:
    train, calibration = in_distribution(rng, 200), in_distribution(rng, 200)
    test = in_distribution(rng, 100)
    validation = {"c": shifted(test, "c", 8.0), "token": shifted(test, TOKEN, 8.0)}
    served = select(train, calibration, validation, SPECS)
    assert [m.role for m in served.members] == ["semantic", "density"]
    assert served.names == ("mahalanobis", "token_density")
    for name, ood in validation.items():
        result = served.evaluate(ood.features(), ood.logits, level=0.05)
        assert result["ood"].mean() > 0.95, name
        fired = {"c": b"mahalanobis", "token": b"token_density"}[name]
        assert np.mean(result["ood_detectors"] == fired) > 0.95


def test_the_level_holds_on_fresh_in_distribution_inputs(rng: np.random.Generator) -> None:
    train, calibration = in_distribution(rng, 300), in_distribution(rng, 1000)
    validation = {
        "c": shifted(in_distribution(rng, 100), "c", 8.0),
        "token": shifted(in_distribution(rng, 100), TOKEN, 3.0),
    }
    served = select(train, calibration, validation, SPECS)
    assert len(served.members) >= 2  # a combination, not one detector
    fresh = in_distribution(rng, 2500)
    result = served.evaluate(fresh.features(), fresh.logits, level=0.05)
    # The combined p-value is a valid p-value: about 5% of in-distribution inputs fall below.
    assert 0.035 < result["ood"].mean() < 0.065
    assert result["ood_p_value"].dtype == np.float32 and result["ood"].dtype == np.bool_
    assert result["ood_detector_p_values"].shape == (5000, len(served.members))
    np.testing.assert_array_equal(result["ood"], result["ood_p_value"] < 0.05)
    # The minimum of the members' p-values alone would flag more than the level allows.
    assert np.mean(result["ood_detector_p_values"].min(axis=1) < 0.05) > 0.07


def test_mahalanobis_score_is_the_semantic_detectors_standardised_score(
    rng: np.random.Generator,
) -> None:
    train, calibration = in_distribution(rng, 200), in_distribution(rng, 200)
    served = select(train, calibration, {}, SPECS)
    reference, _ = halves(len(calibration.labels), seed=0)
    half = calibration.rows(reference)
    result = served.evaluate(half.features(), half.logits, level=0.05)
    assert result["mahalanobis_score"].mean() == pytest.approx(0.0, abs=1e-5)
    assert result["mahalanobis_score"].std() == pytest.approx(1.0, abs=1e-5)
    far = far_away(rng, 20)
    assert served.evaluate(far.features(), far.logits, level=0.05)["ood"].all()
    broken = {**calibration.taps, "a": np.full_like(calibration.taps["a"], np.nan)}
    assert served.evaluate(broken, calibration.logits, level=0.05)["ood"].all()  # nan: not typical


def test_without_validation_every_role_takes_its_first_candidate(rng: np.random.Generator) -> None:
    train, calibration = in_distribution(rng, 100), in_distribution(rng, 100)
    served = select(train, calibration, {}, candidates(TAPS, TOKEN))
    assert served.selection["rule"] == RULE_FALLBACK
    assert [(m.role, m.name) for m in served.members] == [
        ("semantic", "mahalanobis"),
        ("confidence", "energy"),
        ("density", "token_density"),
    ]
    assert served.members[0].detector.params() == {"tap": "c", "normalise": True}


def test_a_forced_method_fills_the_semantic_role(rng: np.random.Generator) -> None:
    train, calibration = in_distribution(rng, 200), in_distribution(rng, 100)
    served = select(train, calibration, {}, candidates(TAPS, TOKEN), forced="tap_ensemble")
    assert served.members[0].name == "tap_ensemble"
    with pytest.raises(ValueError, match="forced OOD method 'knn' is not a semantic candidate"):
        select(train, calibration, {}, SPECS, forced="knn")


def test_bad_arguments_are_refused(rng: np.random.Generator) -> None:
    train = in_distribution(rng, 20)
    with pytest.raises(ValueError, match="no Mahalanobis candidate"):
        select(train, train, {}, SPECS[2:])
    with pytest.raises(ValueError, match="set 'empty' is empty"):
        empty = FeatureSet(taps={}, logits=np.zeros((0, 2)), labels=np.zeros(0, dtype=np.int64))
        select(train, train, {"empty": empty}, SPECS)


@pytest.mark.parametrize("candidate", candidates(TAPS, TOKEN), ids=lambda c: c.method)
def test_save_and_load_give_identical_outputs(
    rng: np.random.Generator, tmp_path: Path, candidate: Candidate
) -> None:
    train, calibration, test = (in_distribution(rng, n) for n in (100, 50, 30))
    specs = [SPECS[0], candidate] if candidate.role != "semantic" else [candidate]
    served = select(train, calibration, {}, specs)
    served.save(tmp_path)
    loaded = ServedOOD.load(tmp_path)
    expected = served.evaluate(test.features(), test.logits, level=0.1)
    for key, value in loaded.evaluate(test.features(), test.logits, level=0.1).items():
        np.testing.assert_array_equal(value, expected[key])
    assert loaded.names == served.names
    assert loaded.selection == json.loads(json.dumps(served.selection))
    widths = {name: features.shape[1] for name, features in train.taps.items()}
    loaded.check_model(widths, 2)


@pytest.fixture
def saved(rng: np.random.Generator, tmp_path: Path) -> Path:
    train, calibration = in_distribution(rng, 50), in_distribution(rng, 50)
    specs = [Candidate("semantic", "mahalanobis", {"tap": "c", "normalise": True}), SPECS[4]]
    select(train, calibration, {}, specs).save(tmp_path)
    return tmp_path


def rewrite_arrays(path: Path, change: dict[str, np.ndarray | None]) -> None:
    with np.load(path) as data:
        arrays = {key: data[key] for key in data.files}
    for key, value in change.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(path, **arrays)


def rewrite_meta(path: Path, change: dict[str, Any]) -> None:
    meta = json.loads(path.read_text())
    path.write_text(json.dumps({**meta, **change}))


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        ("ood.npz", {"min_reference": None}, r"ood\.npz: array 'min_reference' missing"),
        ("ood.npz", {"min_reference": np.array([2.0, 1.0])}, r"'min_reference' must be .*sorted"),
        ("ood.npz", {"reference.mahalanobis": np.zeros(0)}, r"'reference.mahalanobis' must be"),
        ("ood-mahalanobis.npz", {"whitening": None}, r"ood-mahalanobis\.npz: array 'whitening'"),
    ],
)
def test_a_bad_array_is_named_with_the_file(
    saved: Path, file: str, change: dict[str, np.ndarray | None], message: str
) -> None:
    rewrite_arrays(saved / file, change)
    with pytest.raises(ArtifactError, match=message):
        ServedOOD.load(saved)


@pytest.mark.parametrize(
    ("file", "change", "message"),
    [
        ("ood.json", {"members": []}, r"ood\.json: bad field"),
        ("ood.json", {"members": ["token_density"]}, r"ood\.json: no Mahalanobis detector"),
        ("ood.json", {"members": ["nope"]}, r"ood\.npz: array 'reference.nope' missing"),
        ("ood.json", {"num_classes": "2"}, r"ood\.json: bad field"),
        ("ood-mahalanobis.json", {"std": 0.0}, r"ood-mahalanobis\.json: bad field"),
        ("ood-mahalanobis.json", {"role": "nope"}, r"unknown role 'nope'"),
        ("ood-mahalanobis.json", {"method": "msp"}, r"method 'msp' is not the registered"),
        ("ood-mahalanobis.json", {"params": None}, r"ood-mahalanobis\.json: bad field"),
    ],
)
def test_bad_fields_are_named_with_the_file(
    saved: Path, file: str, change: dict[str, Any], message: str
) -> None:
    rewrite_meta(saved / file, change)
    with pytest.raises(ArtifactError, match=message):
        ServedOOD.load(saved)


def test_an_unreadable_archive_is_named(saved: Path) -> None:
    (saved / "ood.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match=r"ood\.npz: unreadable"):
        ServedOOD.load(saved)


def test_check_model_refuses_a_model_the_artifact_does_not_fit(saved: Path) -> None:
    loaded = ServedOOD.load(saved)
    loaded.check_model({"c": 5, TOKEN: 1, "a": 4}, 2)
    with pytest.raises(ArtifactError, match=r"reads 'token', which is not an output"):
        loaded.check_model({"c": 5}, 2)
    with pytest.raises(ArtifactError, match=r"'c' has 6 features in the model, 5 in the artifact"):
        loaded.check_model({"c": 6, TOKEN: 1}, 2)
    with pytest.raises(ArtifactError, match="2 classes in the artifact, 3 in the model"):
        loaded.check_model({"c": 5, TOKEN: 1}, 3)
