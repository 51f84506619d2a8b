"""The classifier task (``task: classifier``): ``/score`` and ``/uncertainty``.

Its section names the probabilities output and the 1/temperature input; ``uncertainty`` names
the outputs the fitted OOD detector and SDM read. Each request input is decoded alone
(``surety_serving.runtime.decoders``), and the scale input is filled from the request's
``temperature``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self

import numpy as np
from pydantic import Field, model_validator

from surety_serving.errors import ConfigError, InvalidInputError, NotCalibratedError
from surety_serving.metrics import Metrics
from surety_serving.protocol.types import InferRequest, InferResponse, Parameters, Tensor
from surety_serving.runtime.config import NAME_PATTERN, FeedSpec, ModelConfig, Strict, TensorSpec
from surety_serving.runtime.decoders import Decoded, InputDecoder, build_decoders, pad_values
from surety_serving.runtime.session import Feeds, OnnxSession
from surety_serving.tasks.base import (
    Call,
    Endpoint,
    Options,
    ServedModel,
    Stage,
    Task,
    select_outputs,
)
from surety_serving.tasks.registry import register_task
from surety_serving.uncertainty.base import TEXTS, ArtifactError
from surety_serving.uncertainty.served import ON_REQUEST, UNCERTAINTY_OUTPUTS, ServedUncertainty

SCORE_OUTPUTS = ("probabilities", "predicted_index", "predicted_label")
UNCERTAINTY_STAGE = "uncertainty"


class ClassifierSpec(Strict):
    """Which model output holds the probabilities, and which input takes 1/temperature."""

    probabilities: str = Field(pattern=NAME_PATTERN)
    scale_input: str | None = Field(default=None, pattern=NAME_PATTERN)


class UncertaintySpec(Strict):
    """Model outputs the uncertainty methods read: per-layer features (taps) and the logits."""

    taps: list[str] = Field(default_factory=list)
    logits: str | None = Field(default=None, description="the output holding the logits z′")
    sdm_tap: str | None = Field(default=None, description="SDM's exemplar space; the last tap")
    token_score: str | None = Field(
        default=None,
        description="an output [B] that scores each row's tokens (higher = less typical): the "
        "covariate-shift signal of the token_density detector",
    )
    ood_method: str | None = Field(
        default=None,
        description="the semantic OOD detector of the set (a Mahalanobis method of the "
        "registry); unset: chosen at calibration by the rule in docs/uncertainty.md",
    )
    ood_level: float = Field(
        default=0.05,
        gt=0.0,
        lt=1.0,
        description="`ood` is an OOD p-value below this level: the share of in-distribution "
        "inputs flagged",
    )
    alpha: float = Field(
        default=0.95, gt=0.5, lt=1.0, description="SDM's reliability level for this model"
    )
    sdm_calibration: Literal["split", "cross_fitted"] = Field(
        default="split",
        description="SDM's calibration: 'split' = support from the train split, calibration "
        "split held out; 'cross_fitted' = every labelled point calibrates once against the "
        "other folds, and all of them are the support",
    )

    @property
    def features(self) -> tuple[str, ...]:
        """Every output the detectors read: the taps and, if the model has one, its token score."""
        return (*self.taps, *((self.token_score,) if self.token_score else ()))


class ClassifierConfig(ModelConfig):
    """A classifier's ``config.yaml``."""

    task: Literal["classifier"]
    labels: list[str] = Field(default_factory=list)
    classifier: ClassifierSpec | None = None
    uncertainty: UncertaintySpec = Field(default_factory=UncertaintySpec)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        outputs = {spec.name: spec for spec in self.outputs}
        uncertainty = self.uncertainty
        named = [
            *(("tap", name) for name in uncertainty.taps),
            ("logits", uncertainty.logits),
            ("token_score", uncertainty.token_score),
        ]
        for role, name in named:
            if name is not None and name not in outputs:
                raise ValueError(f"uncertainty {role} '{name}' is not among the outputs")
        if uncertainty.sdm_tap is not None and uncertainty.sdm_tap not in uncertainty.taps:
            raise ValueError(f"uncertainty.sdm_tap '{uncertainty.sdm_tap}' is not a tap")
        self._check_classifier(outputs)
        return self

    def _check_classifier(self, outputs: dict[str, TensorSpec]) -> None:
        if self.classifier is None:
            raise ValueError("a classifier needs a 'classifier' section")
        probabilities = outputs.get(self.classifier.probabilities)
        if probabilities is None:
            raise ValueError(f"classifier.probabilities '{self.classifier.probabilities}' "
                             "is not among the outputs")  # fmt: skip
        classes = probabilities.shape[-1]
        if not self.labels:
            raise ValueError("a classifier needs labels")
        if classes != -1 and classes != len(self.labels):
            raise ValueError(f"{len(self.labels)} labels for {classes} classes")

    def feeds(self) -> list[FeedSpec]:
        """Each request input's decoder feeds, and the scale input."""
        feeds = super().feeds()
        if self.classifier is not None and self.classifier.scale_input is not None:
            feeds.append(FeedSpec(self.classifier.scale_input, "FP32", (-1, 1)))
        return feeds


class ServedClassifier(ServedModel):
    """A classifier version: its input decoders, labels and fitted uncertainty methods."""

    def __init__(
        self, config: ClassifierConfig, folder: Path, uncertainty: ServedUncertainty | None
    ) -> None:
        assert config.classifier is not None  # the config's validator requires it
        self.spec = config.classifier
        # Built when the version loads, never per request; a missing or broken tokenizer
        # raises ConfigError and fails the version like a bad model.onnx.
        self.decoders: dict[str, InputDecoder] = build_decoders(config, folder)
        self.pad_values = pad_values(self.decoders)
        self.labels = np.array([label.encode() for label in config.labels], dtype=object)
        #: The request input whose texts the text-reading OOD detectors read, if any.
        self.text_input = next(
            (spec.name for spec in config.inputs if spec.datatype == "BYTES"), None
        )
        #: The fitted OOD detector and SDM, or None when the version was never calibrated.
        self.uncertainty = uncertainty

    def decode(self, inputs: Mapping[str, Tensor], options: Options) -> Decoded:
        feeds: Feeds = {}
        parameters: Parameters = {}
        for name, tensor in inputs.items():
            decoded = self.decoders[name](tensor)
            feeds.update(decoded.feeds)
            parameters.update(decoded.parameters)
        if self.spec.scale_input is not None:
            rows = next(iter(feeds.values())).shape[0]
            scale = options.get("scale", 1.0)
            feeds[self.spec.scale_input] = np.full((rows, 1), scale, dtype=np.float32)
        return Decoded(feeds, parameters)

    def stages(self, model: str, metrics: Metrics) -> Mapping[str, Stage]:
        if self.uncertainty is None:
            return {}
        return {
            UNCERTAINTY_STAGE: Stage(
                self.uncertainty.evaluate, metrics.for_uncertainty_batcher(model)
            )
        }


class ClassifierTask(Task):
    """Class probabilities, the argmax and its label; with ``/uncertainty``, OOD and SDM."""

    name = "classifier"
    config = ClassifierConfig
    endpoints = (
        Endpoint(
            "score",
            "The infer body in; outputs probabilities, predicted_index and predicted_label.\n\n"
            "Request parameter ``temperature`` (> 0) divides the logits inside the fused "
            "softmax.",
            "``score`` on one version of the model.",
        ),
        Endpoint(
            "uncertainty",
            "The infer body in; the score outputs plus ood_p_value, ood, ood_detectors, "
            "mahalanobis_score,\nsdm_probabilities, sdm_q, sdm_d, sdm_reliable and sdm_p_lower; "
            "ood_detector_p_values when named\nin the request's outputs. 409 if the model was "
            "never calibrated.",
            "``uncertainty`` on one version of the model.",
        ),
    )

    def load(self, config: ModelConfig, folder: Path, session: OnnxSession) -> ServedModel:
        assert isinstance(config, ClassifierConfig)
        return ServedClassifier(config, folder, load_uncertainty(folder, config, session))

    async def serve(self, endpoint: str, call: Call) -> InferResponse:
        served = call.served
        assert isinstance(served, ServedClassifier)
        with_uncertainty = endpoint == "uncertainty"
        temperature = _temperature(call.request)
        if temperature != 1.0 and served.spec.scale_input is None:
            raise InvalidInputError(f"model '{call.model}' does not take a temperature")
        estimators = served.uncertainty if with_uncertainty else None
        if with_uncertainty and estimators is None:
            raise NotCalibratedError(
                f"model '{call.model}' version {call.version} has no uncertainty artifacts; "
                f"run `surety calibrate {call.model} --train FILE --calibration FILE` first"
            )
        available = [*SCORE_OUTPUTS, *(UNCERTAINTY_OUTPUTS if with_uncertainty else ())]
        default = [name for name in available if name not in ON_REQUEST]
        selected = select_outputs(call.model, available, call.request, default)
        outputs, notes = await call.run({"scale": 1.0 / temperature})
        probabilities = outputs[served.spec.probabilities]
        index = probabilities.argmax(axis=-1).astype(np.int64)
        computed = {
            "probabilities": Tensor("probabilities", "FP32", probabilities),
            "predicted_index": Tensor("predicted_index", "INT64", index),
            "predicted_label": Tensor("predicted_label", "BYTES", served.labels[index]),
        }
        if estimators is not None:
            feeds = {name: outputs[name] for name in (*estimators.taps, estimators.logits)}
            if estimators.ood.reads_texts():
                feeds[TEXTS] = _texts(call.request, served.text_input)
            values = await call.stage(UNCERTAINTY_STAGE, feeds, len(index))
            _record_uncertainty(call.metrics, call.model, values)
            for name, datatype in UNCERTAINTY_OUTPUTS.items():
                computed[name] = Tensor(name, datatype, values[name])
        parameters: Parameters = {
            "temperature": temperature,
            **({"ood_detectors": ",".join(estimators.ood.names)} if estimators else {}),
            **notes,
        }
        return call.respond([computed[name] for name in selected], parameters)


def load_uncertainty(
    version_dir: Path, config: ModelConfig, session: OnnxSession
) -> ServedUncertainty | None:
    """The version's fitted uncertainty methods; a broken artifact fails the version."""
    assert isinstance(config, ClassifierConfig)
    spec = config.uncertainty
    if spec.logits is None or not spec.taps:
        return None
    # A per-row output [B] reads as one feature per row.
    widths = {
        output.name: 1 if len(output.shape) == 1 else output.shape[-1]
        for output in session.session.get_outputs()
        if output.shape and (len(output.shape) == 1 or isinstance(output.shape[-1], int))
    }
    try:
        return ServedUncertainty.load(
            version_dir, spec.features, spec.logits, widths, len(config.labels), spec.ood_level
        )
    except ArtifactError as exc:
        raise ConfigError(f"uncertainty artifacts: {exc}") from exc


def _record_uncertainty(metrics: Metrics, model: str, values: Mapping[str, np.ndarray]) -> None:
    metrics.ood.labels(model=model).inc(int(np.count_nonzero(values["ood"])))
    metrics.sdm_reliable.labels(model=model).inc(int(np.count_nonzero(values["sdm_reliable"])))
    histogram = metrics.mahalanobis_score.labels(model=model)
    for score in values["mahalanobis_score"].tolist():
        histogram.observe(score)


def _texts(request: InferRequest, name: str | None) -> np.ndarray:
    """The request's texts, one ``str`` per row, for the detectors that read text."""
    tensor = next((t for t in request.inputs if t.name == name), None)
    if tensor is None:
        raise InvalidInputError(f"the OOD detectors read input '{name}', which is missing")
    return np.array(
        [value.decode("utf-8", errors="replace") for value in tensor.data.reshape(-1)],
        dtype=object,
    )


def _temperature(request: InferRequest) -> float:
    value = request.parameters.get("temperature", 1.0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError("parameter 'temperature' must be a number")
    if not math.isfinite(value) or value <= 0:
        raise InvalidInputError("parameter 'temperature' must be a finite number > 0")
    return float(value)


register_task(ClassifierTask())
