"""The schema of a model's ``config.yaml``, validated with pydantic."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from service.errors import ConfigError, describe_validation
from service.protocol.datatypes import Datatype

NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_.:/-]*$"
CONFIG_FILE = "config.yaml"


class Strict(BaseModel):
    """Unknown keys are errors: a typo in config.yaml must not be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorSpec(Strict):
    """A named tensor; the first dimension is the batch (-1), -1 elsewhere means any size."""

    name: str = Field(pattern=NAME_PATTERN)
    datatype: Datatype
    shape: list[int] = Field(min_length=1)

    @model_validator(mode="after")
    def _batch_first(self) -> Self:
        if self.shape[0] != -1:
            raise ValueError(f"shape[0] of '{self.name}' must be -1 (the batch dimension)")
        if any(dim == 0 or dim < -1 for dim in self.shape):
            raise ValueError(f"dimensions of '{self.name}' must be positive or -1")
        return self


FILE_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


class TextSpec(Strict):
    """How the ``text`` decoder tokenizes a BYTES input into the encoder's int64 feeds."""

    tokenizer: str = Field(
        default="tokenizer.json", pattern=FILE_PATTERN, description="HF tokenizers file in <v>/"
    )
    max_length: PositiveInt | None = Field(
        default=None, description="token limit (truncation); default: the tokenizer's own"
    )
    input_ids: str = Field(default="input_ids", pattern=NAME_PATTERN)
    attention_mask: str = Field(default="attention_mask", pattern=NAME_PATTERN)


@dataclass(frozen=True)
class FeedSpec:
    """A graph input that a request input is decoded into."""

    name: str
    datatype: Datatype
    shape: tuple[int, ...]


class InputSpec(TensorSpec):
    """A request input and how it is decoded into the model's feeds."""

    decoder: Literal["tensor", "text"] = "tensor"
    range: tuple[float, float] | None = Field(
        default=None, description="inclusive bounds of valid values (numeric inputs)"
    )
    text: TextSpec | None = Field(default=None, description="the text decoder's settings")

    @model_validator(mode="after")
    def _decoder_fields(self) -> Self:
        if self.decoder == "text":
            if self.datatype != "BYTES" or self.shape != [-1]:
                raise ValueError(f"text input '{self.name}' must be BYTES with shape [-1]")
            if self.range is not None:
                raise ValueError(f"text input '{self.name}' takes no range")
        elif self.text is not None:
            raise ValueError(f"input '{self.name}': a 'text' section needs decoder: text")
        return self

    @property
    def text_spec(self) -> TextSpec:
        """The text decoder's settings (defaults when the section is left out)."""
        return self.text if self.text is not None else TextSpec()

    def feeds(self) -> list[FeedSpec]:
        """The graph inputs this request input becomes (itself, for the tensor decoder)."""
        if self.decoder == "text":
            spec = self.text_spec
            return [FeedSpec(n, "INT64", (-1, -1)) for n in (spec.input_ids, spec.attention_mask)]
        return [FeedSpec(self.name, self.datatype, tuple(self.shape))]


class ClassifierSpec(Strict):
    """Which model output holds the probabilities, and which input takes 1/temperature."""

    probabilities: str = Field(pattern=NAME_PATTERN)
    scale_input: str | None = Field(default=None, pattern=NAME_PATTERN)


class BatchingSpec(Strict):
    """Dynamic batching, as Triton's: merge queued requests into one run of at most N rows."""

    max_batch_size: PositiveInt = 32
    max_queue_delay_ms: float = Field(default=2.0, ge=0.0, le=1000.0)
    max_queue_size: PositiveInt = Field(
        default=256,
        description="a ceiling on queued requests; below it, admission takes a request only if "
        "the queued work can finish within its deadline",
    )
    default_timeout_ms: PositiveInt = Field(
        default=10_000,
        description="a request's deadline when it names none (timeout_ms, Request-Timeout)",
    )
    max_length_ratio: float = Field(
        default=2.0,
        ge=1.0,
        description="text models: requests share a batch only while longest/shortest padded "
        "length stays within this factor, so short texts are not padded to a rare long one",
    )


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
        description="the OOD detector to serve (a registry name); unset: chosen at calibration "
        "by the rule in docs/uncertainty.md",
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


class ModelConfig(Strict):
    """A model's ``config.yaml``."""

    task: Literal["classifier", "judge"]
    description: str = ""
    platform: Literal["onnxruntime_onnx"] = "onnxruntime_onnx"
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    labels: list[str] = Field(default_factory=list)
    classifier: ClassifierSpec | None = None
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    uncertainty: UncertaintySpec = Field(default_factory=UncertaintySpec)
    optimize: dict[str, str | int | float | bool] | None = Field(
        default=None,
        description="the graph rewrite applied at export (surety optimize's options, see "
        "docs/optimize.md): a record, not acted on when serving",
    )

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
        if self.task == "classifier":
            self._check_classifier(outputs)
        for spec in self.inputs:
            if spec.range is not None and not all(math.isfinite(b) for b in spec.range):
                raise ValueError(f"range of '{spec.name}' must be finite")
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


def load_config(path: Path) -> ModelConfig:
    """Read and validate ``config.yaml``; ConfigError names the file and the field."""
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    try:
        return ModelConfig.model_validate(raw if raw is not None else {})
    except ValidationError as exc:
        detail = describe_validation(exc).removeprefix("invalid request: ")
        raise ConfigError(f"{path}: {detail}") from exc
