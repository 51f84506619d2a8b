"""The schema of a model's ``config.yaml``, validated with pydantic."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, ValidationError, model_validator

from surety_serving.errors import ConfigError, describe_validation
from surety_serving.protocol.datatypes import Datatype

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


class JudgePromptSpec(Strict):
    """The judge prompt as plain strings: ``prefix + user(fields) + suffix + assistant_prefix``
    (see :mod:`surety_serving.judge.prompt`). ``prefix`` and ``suffix`` are the model's chat template,
    rendered once at export (``system`` is already inside ``prefix``; kept as a record)."""

    system: str = ""
    user: str = Field(description="the user message with one {field} placeholder per field")
    prefix: str
    suffix: str
    assistant_prefix: str = Field(
        default="Score: ", description="prefilled assistant text; the next token is the score"
    )


class JudgeSpec(Strict):
    """An LLM judge (``task: judge``): how named text fields become the graph's token feeds,
    and which outputs hold the LAGER scores."""

    fields: list[str] = Field(min_length=1, description="the named BYTES inputs of a request")
    prompt: JudgePromptSpec
    truncate: list[str] = Field(
        default_factory=list,
        description="fields cut in the middle, in this order, when a prompt is too long",
    )
    max_prompt_tokens: PositiveInt = 1024
    score_tokens: list[str] = Field(min_length=2, description="the score strings, e.g. 1..5")
    score_token_ids: list[int] = Field(min_length=2, description="their single token ids")
    score_values: list[float] = Field(min_length=2, description="the value of each score token")
    lens: Literal["raw", "normed"] = Field(
        default="raw",
        description="raw: layers' hidden states go straight through lm_head (LAGER); normed: "
        "the final norm is applied to each layer first",
    )
    num_layers: PositiveInt = Field(description="transformer layers L; L+1 hidden states")
    tokenizer: str = Field(default="tokenizer.json", pattern=FILE_PATTERN)
    pad_token_id: int = Field(ge=0)
    input_ids: str = Field(default="input_ids", pattern=NAME_PATTERN)
    attention_mask: str = Field(default="attention_mask", pattern=NAME_PATTERN)
    layer_logits: str = Field(default="layer_logits", pattern=NAME_PATTERN)
    expected_score: str = Field(default="expected_score", pattern=NAME_PATTERN)
    score_probabilities: str = Field(default="score_probabilities", pattern=NAME_PATTERN)
    layer_scores: str = Field(default="layer_scores", pattern=NAME_PATTERN)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        from surety_serving.judge.prompt import template_problems

        problems = template_problems(self.fields, self.prompt.user)
        unknown = [name for name in self.truncate if name not in self.fields]
        if unknown:
            problems.append(f"truncate names fields that are not fields: {unknown}")
        if len(set(self.truncate)) != len(self.truncate):
            problems.append(f"truncate repeats fields: {self.truncate}")
        sizes = {len(self.score_tokens), len(self.score_token_ids), len(self.score_values)}
        if len(sizes) != 1:
            problems.append("score_tokens, score_token_ids and score_values differ in length")
        if len(set(self.score_token_ids)) != len(self.score_token_ids):
            problems.append(f"score_token_ids repeat: {self.score_token_ids}")
        if any(i < 0 for i in self.score_token_ids):
            problems.append("score_token_ids must be >= 0")
        if not all(math.isfinite(v) for v in self.score_values):
            problems.append("score_values must be finite")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def feeds(self) -> list[FeedSpec]:
        """The graph inputs the fields become: the rendered prompts, tokenized and left padded."""
        return [FeedSpec(n, "INT64", (-1, -1)) for n in (self.input_ids, self.attention_mask)]

    @property
    def outputs(self) -> tuple[str, ...]:
        """The graph outputs a judge has, in graph order."""
        return (
            self.layer_logits,
            self.expected_score,
            self.score_probabilities,
            self.layer_scores,
        )


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
    judge: JudgeSpec | None = Field(default=None, description="task judge: the judge's prompt")
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
        if self.task == "judge":
            self._check_judge(outputs)
        elif self.judge is not None:
            raise ValueError(f"a 'judge' section needs task: judge, not {self.task}")
        for spec in self.inputs:
            if spec.range is not None and not all(math.isfinite(b) for b in spec.range):
                raise ValueError(f"range of '{spec.name}' must be finite")
        return self

    def feeds(self) -> list[FeedSpec]:
        """Every graph input and what fills it: a judge's prompt tokens; otherwise each request
        input's decoder feeds, and a classifier's scale input."""
        if self.judge is not None:
            return self.judge.feeds()
        feeds = [feed for spec in self.inputs for feed in spec.feeds()]
        if self.classifier is not None and self.classifier.scale_input is not None:
            feeds.append(FeedSpec(self.classifier.scale_input, "FP32", (-1, 1)))
        return feeds

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

    def _check_judge(self, outputs: dict[str, TensorSpec]) -> None:
        if self.judge is None:
            raise ValueError("a judge needs a 'judge' section")
        missing = [name for name in self.judge.outputs if name not in outputs]
        if missing:
            raise ValueError(f"judge outputs {missing} are not among the outputs")
        inputs = {spec.name: spec for spec in self.inputs}
        for name in self.judge.fields:
            spec = inputs.get(name)
            if spec is None or spec.datatype != "BYTES" or spec.shape != [-1]:
                raise ValueError(f"judge field '{name}' needs an input BYTES [-1] of that name")
        extra = sorted(set(inputs) - set(self.judge.fields))
        if extra:
            raise ValueError(f"inputs {extra} are not judge fields")


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
