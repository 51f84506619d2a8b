"""The served OOD score: candidate list, selection rule, threshold, artifact and model checks."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from surety_serving.uncertainty.base import ArtifactError, FeatureSet
from surety_serving.uncertainty.ood import CandidateSpec, ServedOOD, candidates
from surety_serving.uncertainty.selection import RULE_BEST, RULE_FALLBACK, select

from .test_detectors import TAPS, TOKEN, every_candidate, far_away, in_distribution

pytestmark = pytest.mark.unit


def test_candidates_are_the_documented_list() -> None:
    normalised_c = {"tap": "c", "normalise": True}
    assert candidates(TAPS, TOKEN) == [
        ("msp", {}),
        ("energy", {}),
        ("mahalanobis", normalised_c),
        ("mahalanobis", {"tap": "c", "normalise": False}),
        ("mahalanobis", {"tap": "b", "normalise": True}),
        ("mahalanobis", {"tap": "b", "normalise": False}),
        ("relative_mahalanobis", normalised_c),
        ("knn", {"tap": "c", "k": 1}),
        ("knn", {"tap": "c", "k": 10}),
        ("tap_ensemble", {"taps": ["a", "b", "c"], "normalise": True}),
        ("token_density", {"output": TOKEN}),
        (
            "combined",
            {
                "parts": [
                    {"method": "mahalanobis", "params": normalised_c},
                    {"method": "token_density", "params": {"output": TOKEN}},
                ]
            },
        ),
    ]


@pytest.mark.parametrize("taps", [["only"], ["early", "late"]])
def test_candidates_are_not_repeated_when_the_middle_tap_is_the_last(taps: list[str]) -> None:
    specs = candidates(taps, None)
    assert len({json.dumps(spec) for spec in specs}) == len(specs) == 8
    assert {spec[1].get("tap") for spec in specs if spec[0] == "mahalanobis"} == {taps[-1]}
    assert "token_density" not in {method for method, _ in specs}


def test_the_middle_tap_of_four_is_the_third() -> None:
    taps = ["t0", "t1", "t2", "t3"]
    assert {p["tap"] for m, p in candidates(taps, None) if m == "mahalanobis"} == {"t3", "t2"}


def shifted(base: FeatureSet, name: str, offset: float) -> FeatureSet:
    """base with one output moved off the in-distribution data, everything else untouched."""
    taps = dict(base.taps)
    taps[name] = taps[name] + offset
    return replace(base, taps=taps)


SPECS: list[CandidateSpec] = [
    ("msp", {}),
    ("energy", {}),
    ("mahalanobis", {"tap": "a", "normalise": False}),
    ("mahalanobis", {"tap": "c", "normalise": False}),
    ("token_density", {"output": TOKEN}),
]


@pytest.mark.parametrize(("shifted_output", "expected"), [("c", 3), (TOKEN, 4)])
def test_the_candidate_that_separates_the_validation_set_is_chosen(
    rng: np.random.Generator, shifted_output: str, expected: int
) -> None:
    train, calibration = in_distribution(rng, 200), in_distribution(rng, 100)
    # Only one output differs from in-distribution data: only the detector reading it can tell.
    validation = {"shifted": shifted(in_distribution(rng, 100), shifted_output, 8.0)}
    served = select(train, calibration, validation, SPECS)
    selection = served.selection
    assert selection["chosen"] == expected
    assert (served.method, served.detector.params()) == SPECS[expected]
    assert selection["rule"] == RULE_BEST and selection["validation_sets"] == ["shifted"]
    aurocs = [record["mean_auroc"] for record in selection["candidates"]]
    assert aurocs[expected] > 0.99
    assert all(a < 0.75 for i, a in enumerate(aurocs) if i != expected)
    assert [(r["method"], r["params"]) for r in selection["candidates"]] == SPECS
    assert all(set(r["auroc"]) == {"shifted"} for r in selection["candidates"])


def test_the_mean_auroc_over_several_validation_sets_decides(rng: np.random.Generator) -> None:
    train, calibration = in_distribution(rng, 200), in_distribution(rng, 100)
    test = in_distribution(rng, 100)
    # Tap c separates one set perfectly; the token score separates both fairly well.
    validation = {
        "c": shifted(shifted(test, "c", 8.0), TOKEN, 1.5),
        "token": shifted(test, TOKEN, 1.5),
    }
    served = select(train, calibration, validation, SPECS)
    records = served.selection["candidates"]
    assert records[3]["auroc"]["c"] > records[4]["auroc"]["c"]
    assert served.method == "token_density"
    best = max(r["mean_auroc"] for r in records)
    assert records[4]["mean_auroc"] == best
    assert records[4]["mean_auroc"] == pytest.approx(np.mean(list(records[4]["auroc"].values())))


def uniform_far(n: int) -> FeatureSet:
    """Far-away rows: both logits −1000, so MSP and energy both rank every one below the rest."""
    return FeatureSet(taps={}, logits=np.full((n, 2), -1000.0), labels=np.full(n, -1))


@pytest.mark.parametrize("order", [["msp", "energy"], ["energy", "msp"]])
def test_a_tie_goes_to_the_earlier_candidate(rng: np.random.Generator, order: list[str]) -> None:
    train, calibration = in_distribution(rng, 50), in_distribution(rng, 100)
    served = select(train, calibration, {"far": uniform_far(30)}, [(m, {}) for m in order])
    assert [r["mean_auroc"] for r in served.selection["candidates"]] == [1.0, 1.0]
    assert served.method == order[0] and served.selection["chosen"] == 0


def test_without_validation_the_first_combined_candidate_is_served(
    rng: np.random.Generator,
) -> None:
    train, calibration = in_distribution(rng, 100), in_distribution(rng, 100)
    specs = every_candidate()
    served = select(train, calibration, {}, specs)
    assert served.method == "combined"
    assert served.selection["chosen"] == len(specs) - 1
    assert served.selection["rule"] == RULE_FALLBACK
    assert all(r["mean_auroc"] is None and r["auroc"] == {} for r in served.selection["candidates"])


def test_without_validation_or_token_score_normalised_mahalanobis_on_the_last_tap_is_served(
    rng: np.random.Generator,
) -> None:
    train, calibration = in_distribution(rng, 100), in_distribution(rng, 100)
    served = select(train, calibration, {}, candidates(TAPS, None))
    assert served.method == "mahalanobis"
    assert served.detector.params() == {"tap": "c", "normalise": True}


def test_without_validation_a_list_without_a_fallback_is_an_error(rng: np.random.Generator) -> None:
    train = in_distribution(rng, 20)
    with pytest.raises(ValueError, match="no combined or normalised mahalanobis"):
        select(train, train, {}, [("msp", {}), ("mahalanobis", {"tap": "c", "normalise": False})])


def test_a_forced_method_serves_its_best_candidate(rng: np.random.Generator) -> None:
    train, calibration = in_distribution(rng, 200), in_distribution(rng, 100)
    validation = {"shifted": shifted(in_distribution(rng, 100), "c", 8.0)}
    served = select(train, calibration, validation, SPECS, forced="energy")
    assert served.method == "energy"
    assert "forced" in served.selection["rule"]
    specs = [*SPECS, ("mahalanobis", {"tap": "b", "normalise": False})]
    served = select(train, calibration, validation, specs, forced="mahalanobis")
    assert served.detector.params() == {"tap": "c", "normalise": False}
    # Without validation sets, the first candidate of the forced method.
    served = select(train, calibration, {}, specs, forced="mahalanobis")
    assert served.detector.params() == {"tap": "a", "normalise": False}


def test_a_forced_method_that_is_not_a_candidate_is_an_error(rng: np.random.Generator) -> None:
    train = in_distribution(rng, 20)
    with pytest.raises(ValueError, match="forced OOD method 'knn' is not a candidate"):
        select(train, train, {}, SPECS, forced="knn")


@pytest.mark.parametrize("keep_fraction", [0.9, 0.95])
def test_the_threshold_keeps_the_configured_share_of_calibration(
    rng: np.random.Generator, keep_fraction: float
) -> None:
    train, calibration = in_distribution(rng, 200), in_distribution(rng, 200)
    validation = {"shifted": shifted(in_distribution(rng, 100), "c", 8.0)}
    served = select(train, calibration, validation, SPECS, keep_fraction=keep_fraction)
    # Not MSP, which saturates at exactly 1.0 on these confident rows: ties keep them all.
    assert served.method == "mahalanobis"
    result = served.evaluate(calibration.taps, calibration.logits)
    assert result["mahalanobis_score"].dtype == np.float32 and result["ood"].dtype == np.bool_
    kept = 1.0 - result["ood"].mean()
    assert keep_fraction <= kept < keep_fraction + 0.01
    # The lower order statistic at (1 − keep_fraction)(n − 1), not an interpolation.
    ordered = np.sort(served.standardised(calibration.taps, calibration.logits))
    assert served.threshold == ordered[int((1.0 - keep_fraction) * (len(ordered) - 1))]
    # Standardised on calibration: mean 0, standard deviation 1.
    assert result["mahalanobis_score"].mean() == pytest.approx(0.0, abs=1e-5)
    assert result["mahalanobis_score"].std() == pytest.approx(1.0, abs=1e-5)
    far = validation["shifted"]
    assert served.evaluate(far.taps, far.logits)["ood"].mean() > 0.99
    broken = {**calibration.taps, "c": np.full_like(calibration.taps["c"], np.nan)}
    assert served.evaluate(broken, calibration.logits)["ood"].all()  # nan is not typical


def test_bad_arguments_are_refused(rng: np.random.Generator) -> None:
    train = in_distribution(rng, 20)
    with pytest.raises(ValueError, match="keep_fraction"):
        select(train, train, {}, SPECS, keep_fraction=1.0)
    with pytest.raises(ValueError, match="no OOD candidates"):
        select(train, train, {}, [])
    with pytest.raises(ValueError, match="set 'empty' is empty"):
        select(train, train, {"empty": uniform_far(0)}, SPECS)


@pytest.mark.parametrize(("method", "params"), every_candidate())
def test_save_and_load_give_identical_outputs(
    rng: np.random.Generator, tmp_path: Path, method: str, params: dict[str, Any]
) -> None:
    train, calibration, test = (in_distribution(rng, n) for n in (100, 50, 30))
    served = select(train, calibration, {"far": far_away(rng, 20)}, [(method, params)])
    served.save(tmp_path)
    loaded = ServedOOD.load(tmp_path)
    expected = served.evaluate(test.taps, test.logits)
    for key, value in loaded.evaluate(test.taps, test.logits).items():
        np.testing.assert_array_equal(value, expected[key])
    assert loaded.method == method
    assert (loaded.mean, loaded.std, loaded.threshold) == (
        served.mean,
        served.std,
        served.threshold,
    )
    assert loaded.selection == json.loads(json.dumps(served.selection))
    widths = {name: features.shape[1] for name, features in train.taps.items()}
    loaded.check_model(widths, 2)


@pytest.fixture
def saved(rng: np.random.Generator, tmp_path: Path) -> Path:
    train, calibration = in_distribution(rng, 50), in_distribution(rng, 50)
    specs = [("combined", every_candidate()[-1][1])]
    select(train, calibration, {"far": far_away(rng, 20)}, specs).save(tmp_path)
    return tmp_path


def rewrite_arrays(directory: Path, change: dict[str, np.ndarray | None]) -> None:
    with np.load(directory / "ood.npz") as data:
        arrays = {key: data[key] for key in data.files}
    for key, value in change.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    np.savez(directory / "ood.npz", **arrays)


def rewrite_meta(directory: Path, change: dict[str, Any]) -> None:
    meta = json.loads((directory / "ood.json").read_text())
    (directory / "ood.json").write_text(json.dumps({**meta, **change}))


def test_a_missing_array_is_named_with_the_file(saved: Path) -> None:
    rewrite_arrays(saved, {"part0.whitening": None})
    with pytest.raises(
        ArtifactError, match=r"ood\.npz: array 'whitening' missing.*combined part 0"
    ):
        ServedOOD.load(saved)


def test_a_misshapen_array_is_named_with_the_file(saved: Path) -> None:
    rewrite_arrays(saved, {"part_std": np.ones(3)})
    with pytest.raises(ArtifactError, match=r"ood\.npz: array 'part_std' has shape \(3,\)"):
        ServedOOD.load(saved)


def test_an_unreadable_archive_is_named(saved: Path) -> None:
    (saved / "ood.npz").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match=r"ood\.npz: unreadable"):
        ServedOOD.load(saved)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"method": "nope"}, r"ood\.json: unknown OOD method 'nope'"),
        ({"method": ["msp"]}, r"ood\.json: unknown OOD method \['msp'\]"),
        ({"std": 0.0}, r"ood\.json: bad field"),
        ({"keep_fraction": 1.5}, r"ood\.json: bad field"),
        ({"num_classes": "2"}, r"ood\.json: bad field"),
        ({"params": None}, r"ood\.json: bad field"),
        ({"params": {"parts": []}}, r"ood\.json: combined: parameter 'parts' must not be empty"),
        (
            {"method": "knn", "params": {"tap": "c", "k": 1}},
            r"ood\.npz: array 'train' missing",
        ),
    ],
)
def test_bad_fields_are_named_with_the_file(
    saved: Path, change: dict[str, Any], message: str
) -> None:
    rewrite_meta(saved, change)
    with pytest.raises(ArtifactError, match=message):
        ServedOOD.load(saved)


def test_a_missing_field_is_named_with_the_file(saved: Path) -> None:
    meta = json.loads((saved / "ood.json").read_text())
    del meta["threshold"]
    (saved / "ood.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"ood\.json: bad field \('threshold'\)"):
        ServedOOD.load(saved)


def test_check_model_refuses_a_model_the_artifact_does_not_fit(saved: Path) -> None:
    loaded = ServedOOD.load(saved)
    loaded.check_model({"c": 5, TOKEN: 1, "a": 4}, 2)
    with pytest.raises(ArtifactError, match=r"reads 'token', which is not an output"):
        loaded.check_model({"c": 5}, 2)
    with pytest.raises(ArtifactError, match=r"'c' has 6 features in the model, 5 in the artifact"):
        loaded.check_model({"c": 6, TOKEN: 1}, 2)
    with pytest.raises(ArtifactError, match=r"'token' has 3 features"):
        loaded.check_model({"c": 5, TOKEN: 3}, 2)
    with pytest.raises(ArtifactError, match="2 classes in the artifact, 3 in the model"):
        loaded.check_model({"c": 5, TOKEN: 1}, 3)
