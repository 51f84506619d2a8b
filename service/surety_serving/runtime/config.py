"""The schema of a model's ``config.yaml``, validated with pydantic."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Self, TypeVar, overload

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PositiveInt,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

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


class ModelConfig(Strict):
    """A model's ``config.yaml``: what every task has. Each task's config class adds its own
    section (``surety_serving.tasks``); ``ModelConfig.model_validate`` and ``load_config`` return an
    instance of the class that ``task:`` names."""

    task: str
    description: str = ""
    platform: Literal["onnxruntime_onnx"] = "onnxruntime_onnx"
    inputs: list[InputSpec] = Field(min_length=1)
    outputs: list[TensorSpec] = Field(min_length=1)
    batching: BatchingSpec = Field(default_factory=BatchingSpec)
    optimize: dict[str, str | int | float | bool] | None = Field(
        default=None,
        description="the graph rewrite applied at export (surety optimize's options, see "
        "docs/optimize.md): a record, not acted on when serving",
    )

    @model_validator(mode="wrap")
    @classmethod
    def _as_task(cls, data: Any, handler: ModelWrapValidatorHandler[Self]) -> Self:
        # Validating the common class means validating the class its task names.
        if cls is not ModelConfig:
            return handler(data)
        problem = task_problem(data)
        if problem is not None:
            raise PydanticCustomError("task", problem)
        from surety_serving.tasks.registry import config_adapter

        result: Self = config_adapter().validate_python(data)
        return result

    @model_validator(mode="after")
    def _finite_ranges(self) -> Self:
        for spec in self.inputs:
            if spec.range is not None and not all(math.isfinite(b) for b in spec.range):
                raise ValueError(f"range of '{spec.name}' must be finite")
        return self

    def feeds(self) -> list[FeedSpec]:
        """Every graph input and what fills it: each request input's decoder feeds."""
        return [feed for spec in self.inputs for feed in spec.feeds()]


ConfigT = TypeVar("ConfigT", bound=ModelConfig)


def task_problem(data: Any) -> str | None:
    """What is wrong with the ``task:`` of a raw config: not a registered task, or a section
    of another task (sections are named after their task)."""
    from surety_serving.tasks.registry import tasks

    if not isinstance(data, dict):
        return None
    names = [task.name for task in tasks()]
    task = data.get("task")
    if task not in names:
        quoted = [f"'{name}'" for name in names]
        expected = " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)
        return f"task: Input should be {expected}"
    for name in names:
        if name != task and name in data:
            return f"a '{name}' section needs task: {name}, not {task}"
    return None


@overload
def load_config(path: Path) -> ModelConfig: ...
@overload
def load_config(path: Path, expected: type[ConfigT]) -> ConfigT: ...
def load_config(path: Path, expected: type[ModelConfig] = ModelConfig) -> ModelConfig:
    """Read and validate ``config.yaml`` into its task's config class; ConfigError names the
    file and the field, or the task when the entry is not of the ``expected`` config class."""
    from surety_serving.tasks.registry import config_adapter

    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from exc
    raw = raw if raw is not None else {}
    problem = task_problem(raw)
    if problem is not None:
        raise ConfigError(f"{path}: {problem}")
    try:
        config: ModelConfig = config_adapter().validate_python(raw)
    except ValidationError as exc:
        detail = describe_validation(exc, drop=raw.get("task") if isinstance(raw, dict) else None)
        raise ConfigError(f"{path}: {detail.removeprefix('invalid request: ')}") from exc
    if not isinstance(config, expected):
        raise ConfigError(f"{path}: task is '{config.task}', not a {expected.__name__}")
    return config
