"""POST /uncertainty on the calibrated digits default: outputs, agreement with the offline
estimators, OOD behaviour, metrics, and 409 for a model that was never calibrated."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from surety_kit.payloads import image_request
from surety_kit.server import running_server
from surety_serving.runtime.config import load_config
from surety_serving.settings import Settings
from surety_serving.tasks.classifier import ClassifierConfig, load_uncertainty
from surety_serving.uncertainty.served import ON_REQUEST, UNCERTAINTY_OUTPUTS
from tests.service.helpers import run_direct

pytestmark = pytest.mark.model

SCORE = ["probabilities", "predicted_index", "predicted_label"]


def outputs(body: dict[str, Any]) -> dict[str, Any]:
    return {o["name"]: o for o in body["outputs"]}


def array(output: dict[str, Any]) -> np.ndarray:
    return np.array(output["data"]).reshape(output["shape"])


def test_outputs_names_datatypes_and_shapes(client, images):
    response = client.post("/v2/models/digits/uncertainty", json=image_request(images[:5]))
    assert response.status_code == 200, response.text
    out = outputs(response.json())
    # Every output but the per-detector p-values, which come on request only.
    assert list(out) == SCORE + [name for name in UNCERTAINTY_OUTPUTS if name not in ON_REQUEST]
    # The detector set is named: digits' config forces the tap ensemble as its semantic member;
    # without validation sets every role joins.
    detectors = response.json()["parameters"]["ood_detectors"].split(",")
    assert detectors[0] == "tap_ensemble" and len(detectors) >= 2
    for name in out.keys() - set(SCORE):
        assert out[name]["datatype"] == UNCERTAINTY_OUTPUTS[name]
    assert out["sdm_probabilities"]["shape"] == [5, 10]
    for name in ("ood_p_value", "ood", "ood_detectors", "mahalanobis_score", "sdm_q", "sdm_d"):
        assert out[name]["shape"] == [5]
    assert set(out["ood_detectors"]["data"]) <= set(detectors)
    p_value = array(out["ood_p_value"])
    assert ((p_value > 0) & (p_value <= 1)).all()
    np.testing.assert_array_equal(array(out["ood"]), p_value < 0.05)


def test_each_detectors_p_value_on_request(client, images):
    names = ["ood_detector_p_values", "ood_p_value", "ood_detectors"]
    request = image_request(images[:3], outputs=[{"name": name} for name in names])
    body = client.post("/v2/models/digits/uncertainty", json=request).json()
    out = outputs(body)
    detectors = body["parameters"]["ood_detectors"].split(",")
    per_detector = array(out["ood_detector_p_values"])
    assert per_detector.shape == (3, len(detectors))
    # The detector named as the one that fired has the row's lowest p-value.
    lowest = [detectors[i] for i in per_detector.argmin(axis=1)]
    assert out["ood_detectors"]["data"] == lowest


def test_served_values_equal_the_offline_estimators(client, direct, repository, images):
    batch = images[:16]
    body = client.post("/v2/models/digits/uncertainty", json=image_request(batch)).json()
    out = outputs(body)
    entry = repository / "digits"
    estimators = load_uncertainty(entry / "1", load_config(entry / "config.yaml"), direct)
    assert estimators is not None
    expected = estimators.evaluate(run_direct(direct, batch))
    for name in out.keys() - set(SCORE):
        if name == "ood_detectors":
            assert out[name]["data"] == [v.decode() for v in expected[name]]
        else:
            np.testing.assert_allclose(array(out[name]), expected[name], rtol=1e-5, atol=1e-6)


def test_in_distribution_digits_are_mostly_trusted_and_noise_is_not(client, images, labels):
    clean = outputs(
        client.post("/v2/models/digits/uncertainty", json=image_request(images[:64])).json()
    )
    rng = np.random.default_rng(0)
    noise = rng.uniform(0, 16, size=(64, 64)).astype(np.float32)
    far = outputs(client.post("/v2/models/digits/uncertainty", json=image_request(noise)).json())
    assert array(clean["ood"]).mean() <= 0.15
    assert array(far["ood"]).mean() >= 0.9
    # SDM's lower bound is conservative with digits' ~36 calibration points per class (the DKW
    # margin is ≥ 0.23), so only part of the clean digits is admitted; none of the noise is.
    assert array(clean["sdm_reliable"]).mean() >= 0.1
    assert array(far["sdm_reliable"]).mean() == 0.0
    assert np.median(array(clean["mahalanobis_score"])) > np.median(array(far["mahalanobis_score"]))
    # The admitted clean digits are right.
    admitted = array(clean["sdm_reliable"]).astype(bool)
    predicted = array(clean["predicted_index"])
    assert (predicted[admitted] == labels[:64][admitted]).mean() >= 0.95


def test_requested_outputs_subset(client, images):
    request = image_request(images[:2], outputs=[{"name": "sdm_reliable"}, {"name": "ood"}])
    body = client.post("/v2/models/digits/uncertainty", json=request).json()
    assert [o["name"] for o in body["outputs"]] == ["sdm_reliable", "ood"]


def test_metrics_count_ood_and_reliable(client, images):
    def total(name: str) -> float:
        text = client.get("/metrics").text
        lines = [line for line in text.splitlines() if line.startswith(f'{name}{{model="digits"}}')]
        return float(lines[0].split()[-1]) if lines else 0.0

    noise = np.full((8, 64), 16.0, dtype=np.float32)
    before = total("surety_ood_total"), total("surety_mahalanobis_score_count")
    client.post("/v2/models/digits/uncertainty", json=image_request(noise))
    after = total("surety_ood_total"), total("surety_mahalanobis_score_count")
    assert after[0] - before[0] == 8
    assert after[1] - before[1] == 8
    assert "surety_sdm_reliable_total" in client.get("/metrics").text


@pytest.fixture(scope="module")
def uncalibrated(repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose only model is digits without its uncertainty folder."""
    root = tmp_path_factory.mktemp("uncalibrated")
    shutil.copytree(repository / "digits", root / "digits")
    shutil.rmtree(root / "digits" / "1" / "uncertainty")
    with running_server(Settings(model_repository=root)) as url:
        yield url


def test_a_model_without_artifacts_answers_409(uncalibrated, images):
    with httpx.Client(base_url=uncalibrated, timeout=30) as http:
        response = http.post("/v2/models/digits/uncertainty", json=image_request(images[:1]))
        assert response.status_code == 409
        assert "surety calibrate digits" in response.json()["error"]
        # /score still works on it.
        assert (
            http.post("/v2/models/digits/score", json=image_request(images[:1])).status_code == 200
        )


def test_broken_artifacts_fail_the_version_with_the_file_named(repository, tmp_path):
    shutil.copytree(repository / "digits", tmp_path / "digits")
    (tmp_path / "digits" / "1" / "uncertainty" / "sdm.npz").write_bytes(b"not a zip")
    from surety_serving.runtime.repository import load_repository

    entry = load_repository(tmp_path, 1)["digits"]
    assert not entry.versions
    assert "sdm.npz" in entry.failures["1"]


def test_concurrent_requests_each_get_their_own_rows(server, direct, repository, images):
    """Requests evaluated together in one uncertainty batch are split back in order."""
    from concurrent.futures import ThreadPoolExecutor

    entry = repository / "digits"
    estimators = load_uncertainty(entry / "1", load_config(entry / "config.yaml"), direct)
    assert estimators is not None

    def ask(i: int) -> tuple[int, dict[str, Any]]:
        batch = images[i : i + 1 + i % 3]
        with httpx.Client(base_url=server, timeout=30) as http:
            body = http.post("/v2/models/digits/uncertainty", json=image_request(batch)).json()
        return i, outputs(body)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(32)))
    for i, out in answers:
        expected = estimators.evaluate(run_direct(direct, images[i : i + 1 + i % 3]))
        for name in ("mahalanobis_score", "sdm_q", "sdm_reliable"):
            np.testing.assert_allclose(array(out[name]), expected[name], rtol=1e-5, atol=1e-6)


def test_the_level_is_read_from_the_config_without_recalibrating(repository, direct, images):
    """`uncertainty.ood_level` moves the flagged share of in-distribution inputs: the p-values
    are fitted once, the level is the operator's."""
    entry = repository / "digits"
    config = load_config(entry / "config.yaml", ClassifierConfig)
    outputs_of = run_direct(direct, images[:200])
    shares = {}
    for level in (0.05, 0.5):
        changed = config.model_copy(
            update={"uncertainty": config.uncertainty.model_copy(update={"ood_level": level})}
        )
        estimators = load_uncertainty(entry / "1", changed, direct)
        assert estimators is not None and estimators.level == level
        shares[level] = estimators.evaluate(outputs_of)["ood"].mean()
    assert shares[0.05] < 0.15 and 0.35 < shares[0.5] < 0.65
