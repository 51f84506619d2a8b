"""The LLM-judge task (``task: judge``): ``/judge``.

Its ``judge`` section holds the prompt template and the score tokens. A judge reads its named
BYTES fields together into one prompt per row (``surety_serving.judge.inputs``), left padded so that
every row's last token, where the score is read, stays in the last column when the batcher
merges requests.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, PositiveInt, model_validator

from surety_serving.judge.inputs import JudgeInputs
from surety_serving.judge.prompt import template_problems
from surety_serving.protocol.types import InferResponse, Tensor
from surety_serving.runtime.config import (
    FILE_PATTERN,
    NAME_PATTERN,
    FeedSpec,
    ModelConfig,
    Strict,
    TensorSpec,
)
from surety_serving.runtime.decoders import Decoded
from surety_serving.runtime.session import OnnxSession
from surety_serving.tasks.base import Call, Endpoint, Options, ServedModel, Task, select_outputs
from surety_serving.tasks.registry import register_task

#: A judge's answers; the per-layer scores only when asked for (they are for inspection).
JUDGE_OUTPUTS = ("expected_score", "score_probabilities", "layer_scores")
JUDGE_DEFAULT_OUTPUTS = ("expected_score", "score_probabilities")


class JudgePromptSpec(Strict):
    """The judge prompt as plain strings: ``prefix + user(fields) + suffix + assistant_prefix``
    (see :mod:`surety_serving.judge.prompt`). ``prefix`` and ``suffix`` are the model's chat
    template,
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


class JudgeConfig(ModelConfig):
    """An LLM judge's ``config.yaml``."""

    task: Literal["judge"]
    judge: JudgeSpec = Field(description="the judge's prompt")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        outputs: dict[str, TensorSpec] = {spec.name: spec for spec in self.outputs}
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
        return self

    def feeds(self) -> list[FeedSpec]:
        """The rendered prompts' tokens."""
        return self.judge.feeds()


class ServedJudge(ServedModel):
    """A judge version: its prompt encoder (the version's tokenizer, loaded once)."""

    pad_left = True

    def __init__(self, spec: JudgeSpec, folder: Path) -> None:
        self.spec = spec
        self.inputs = JudgeInputs(spec, folder)
        self.pad_values = dict(self.inputs.pad_values)

    def decode(self, inputs: Mapping[str, Tensor], options: Options) -> Decoded:
        return self.inputs(inputs)


class JudgeTask(Task):
    """An LLM judge's expected score (LAGER over the layers' score-token logits)."""

    name = "judge"
    config = JudgeConfig
    endpoints = (
        Endpoint(
            "judge",
            "The judge's prompt fields as BYTES inputs, one row per judged item: "
            "``expected_score``\n[B], ``score_probabilities`` [B, K] and, when named in "
            "``outputs``, ``layer_scores``\n[B, L+1] (each layer's expected score).",
            "The judge's scores from one version of the model.",
            tags=("judge",),
        ),
    )

    def load(self, config: ModelConfig, folder: Path, session: OnnxSession) -> ServedModel:
        assert isinstance(config, JudgeConfig)
        return ServedJudge(config.judge, folder)

    async def serve(self, endpoint: str, call: Call) -> InferResponse:
        """The expected score, the aggregated score distribution and, when asked for, every
        layer's expected score."""
        served = call.served
        assert isinstance(served, ServedJudge)
        spec = served.spec
        selected = select_outputs(call.model, JUDGE_OUTPUTS, call.request, JUDGE_DEFAULT_OUTPUTS)
        outputs, notes = await call.run()
        graph = dict(zip(JUDGE_OUTPUTS, (spec.expected_score, spec.score_probabilities,
                                         spec.layer_scores), strict=True))  # fmt: skip
        histogram = call.metrics.judge_score.labels(model=call.model)
        for score in outputs[spec.expected_score].tolist():
            histogram.observe(score)
        return call.respond(
            [Tensor(name, "FP32", outputs[graph[name]]) for name in selected], notes
        )


register_task(JudgeTask())
