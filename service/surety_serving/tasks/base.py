"""The task protocol: everything the runtime and the HTTP layer know about a model kind.

A task (``config.yaml``'s ``task:``) supplies its config class, which owns the task's section;
``load``, which builds a version's per-version state (tokenizer, fitted artifacts) as a
:class:`ServedModel`; the endpoints it serves beyond OIP's ``infer``; and ``serve``, which
answers one of them. The runtime decodes, pads and batches through :class:`ServedModel` and
hands each request to the task as a :class:`Call`; it never asks which task it holds.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from surety_serving.errors import InvalidInputError
from surety_serving.protocol.types import InferRequest, InferResponse, Parameters, Tensor
from surety_serving.runtime.decoders import Decoded
from surety_serving.runtime.session import Feeds

if TYPE_CHECKING:
    from surety_serving.metrics import BatchMetrics, Metrics
    from surety_serving.runtime.config import ModelConfig
    from surety_serving.runtime.session import OnnxSession

#: What ``ServedModel.decode`` is told by the endpoint (e.g. a classifier's logit scale).
Options = Mapping[str, Any]


@dataclass(frozen=True)
class Endpoint:
    """A ``POST /v2/models/{model}[/versions/{version}]/<name>`` route of a task.

    It takes the ``infer`` body and answers the ``infer`` response shape; ``description`` and
    ``version_description`` document the two routes, ``statuses`` the errors it can answer
    besides the inference routes' own and the 409 that every task endpoint may answer."""

    name: str
    description: str
    version_description: str
    tags: tuple[str, ...] = ("extensions",)
    statuses: tuple[int, ...] = ()


@dataclass(frozen=True)
class Stage:
    """A step after inference that the runtime batches like inference (e.g. uncertainty):
    requests answered by one ORT batch reach it together and are evaluated as one."""

    run: Callable[[Feeds], Feeds]
    metrics: BatchMetrics


class ServedModel(ABC):
    """A task's state for one loaded version: how requests become feeds, and how merged
    requests are padded."""

    #: Sequence feeds and their pad values, for the batcher's merge (feeds not listed must
    #: match exactly).
    pad_values: Mapping[str, int] = {}
    #: Pad at the start of axis 1 (a causal model reads its answer at the last position).
    pad_left: bool = False

    @abstractmethod
    def decode(self, inputs: Mapping[str, Tensor], options: Options) -> Decoded:
        """The feeds of one request (every input named by the config is present, no other);
        InvalidInputError for what the request got wrong."""

    def stages(self, model: str, metrics: Metrics) -> Mapping[str, Stage]:
        """The batched post-inference steps of this version, by name (none by default)."""
        return {}


class Call(Protocol):
    """One request to a task endpoint, as the runtime hands it to the task."""

    @property
    def model(self) -> str:
        """The model's name."""

    @property
    def version(self) -> int:
        """The version that serves the request."""

    @property
    def request(self) -> InferRequest:
        """The decoded request."""

    @property
    def served(self) -> ServedModel:
        """The version's task state (what ``Task.load`` returned)."""

    @property
    def metrics(self) -> Metrics:
        """The app's metrics, for a task's domain series."""

    async def run(self, options: Options | None = None) -> tuple[Feeds, Parameters]:
        """The model's outputs for the request, decoded with ``options``, and what decoding
        reports for the response."""

    async def stage(self, name: str, feeds: Feeds, rows: int) -> Feeds:
        """The outputs of the version's stage ``name`` for ``rows`` rows of ``feeds``."""

    def respond(self, outputs: Sequence[Tensor], parameters: Parameters) -> InferResponse:
        """The response of this request with ``outputs``."""


class Task(ABC):
    """A model kind. Register an instance with ``surety_serving.tasks.registry.register_task``."""

    #: The ``task:`` value of its config.yaml.
    name: ClassVar[str]
    #: Its config class: a ``ModelConfig`` whose ``task`` is ``Literal[name]``.
    config: ClassVar[type[ModelConfig]]
    #: What it serves besides ``infer``.
    endpoints: ClassVar[tuple[Endpoint, ...]]

    @abstractmethod
    def load(self, config: ModelConfig, folder: Path, session: OnnxSession) -> ServedModel:
        """A version's state, from its folder (``<model>/<version>``) and its session;
        ConfigError fails the version like a bad model.onnx."""

    @abstractmethod
    async def serve(self, endpoint: str, call: Call) -> InferResponse:
        """Answer ``call`` on ``endpoint`` (one of ``endpoints``)."""

    @classmethod
    def serves(cls) -> tuple[str, ...]:
        """Every endpoint name a model of this task answers, ``infer`` first."""
        return ("infer", *(endpoint.name for endpoint in cls.endpoints))


def select_outputs(
    model: str,
    available: Sequence[str],
    request: InferRequest,
    default: Sequence[str] | None = None,
) -> list[str]:
    """The requested output names in request order, or the default (every available output)."""
    if request.outputs is None:
        return list(available if default is None else default)
    names = [output.name for output in request.outputs]
    for name in names:
        if name not in available:
            raise InvalidInputError(
                f"model '{model}' has no output '{name}'; outputs: {', '.join(available)}"
            )
    if len(set(names)) != len(names):
        raise InvalidInputError("an output is requested more than once")
    return names
