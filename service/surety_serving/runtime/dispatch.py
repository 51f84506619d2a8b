"""Task dispatch: OIP ``infer`` for every model, and each task endpoint handed to the task.

Decoding (the version's ``ServedModel``), batching and the batched stages are the same for
every task; what an endpoint answers is the task's (``Task.serve``, given a :class:`RequestCall`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from functools import partial

from surety_serving.errors import EndpointNotServedError, InvalidInputError
from surety_serving.metrics import Metrics
from surety_serving.protocol.types import InferRequest, InferResponse, Parameters, Tensor
from surety_serving.runtime.admission import Admission
from surety_serving.runtime.lifecycle import Models
from surety_serving.runtime.repository import ModelVersion
from surety_serving.runtime.session import Feeds
from surety_serving.tasks.base import Options, ServedModel, select_outputs

#: Largest request whose stage (e.g. uncertainty) runs inline when it is its model's only one.
INLINE_STAGE_ROWS = 4
#: Requests carrying more input than this (bytes, or characters of text) are decoded and
#: tokenized in a worker thread: a few hundred microseconds of the event loop at most.
INLINE_DECODE_BYTES = 16 * 1024

#: An inference-style method: (model, version, request, deadline) → response.
Method = Callable[[str, int | None, InferRequest, float], Awaitable[InferResponse]]


class Dispatch:
    """Runs requests: ``infer`` itself, task endpoints through their task."""

    def __init__(self, models: Models, admission: Admission, metrics: Metrics) -> None:
        self._models = models
        self._admission = admission
        self.metrics = metrics

    async def infer(
        self, model: str, version: int | None, request: InferRequest, deadline: float
    ) -> InferResponse:
        """Run the model and return the requested raw outputs (all, by default)."""
        target = self._models.version(model, version)
        datatypes = {spec.name: spec.datatype for spec in target.config.outputs}
        selected = select_outputs(model, list(datatypes), request)
        call = RequestCall(self, target, request, deadline)
        outputs, notes = await call.run()
        tensors = [Tensor(name, datatypes[name], outputs[name]) for name in selected]
        return call.respond(tensors, notes)

    def method(self, endpoint: str) -> Method:
        """The method that answers ``endpoint``: ``infer``, or a task endpoint (409 on a
        model whose task does not serve it)."""
        if endpoint == "infer":
            return self.infer
        return partial(self.serve, endpoint)

    async def serve(
        self,
        endpoint: str,
        model: str,
        version: int | None,
        request: InferRequest,
        deadline: float,
    ) -> InferResponse:
        """Answer a task endpoint; 409 when the model's task does not serve it."""
        target = self._models.version(model, version)
        serves = target.task.serves()
        if endpoint not in serves:
            raise EndpointNotServedError(
                f"model '{model}' (task: {target.task.name}) does not serve /{endpoint}; "
                f"it serves {', '.join(f'/{e}' for e in serves)}"
            )
        return await target.task.serve(endpoint, RequestCall(self, target, request, deadline))

    async def run(
        self, target: ModelVersion, request: InferRequest, options: Options, deadline: float
    ) -> tuple[Feeds, Parameters]:
        """The model's outputs, and what decoding reports for the response (e.g. truncation)."""
        self._models.check_open()
        if _input_size(request) > INLINE_DECODE_BYTES:
            feeds, rows, notes = await asyncio.to_thread(_prepare, target, request, options)
        else:
            feeds, rows, notes = _prepare(target, request, options)
        batcher = self._models.batchers[target.model, target.version]
        alone = self._admission.active(target.model) <= 1
        outputs = await batcher.submit(feeds, rows, deadline, alone)
        return outputs, notes

    async def stage(
        self, target: ModelVersion, name: str, feeds: Feeds, rows: int, deadline: float
    ) -> Feeds:
        """A batched stage's outputs for ``rows`` rows."""
        stage, batcher = self._models.stages[target.model, target.version][name]
        if self._admission.active(target.model) <= 1 and rows <= INLINE_STAGE_ROWS:
            # The only request of this model in flight: evaluated on the event loop (a few
            # hundred µs), since the hop to the executor and back would cost as much. Under
            # load, requests of one ORT batch are evaluated together by the batcher instead.
            return stage.run(feeds)
        return await batcher.submit(feeds, rows, deadline)


@dataclass(frozen=True)
class RequestCall:
    """One request to one model version, as a task sees it (``surety_serving.tasks.base.Call``)."""

    dispatch: Dispatch
    target: ModelVersion
    request: InferRequest
    deadline: float

    @property
    def model(self) -> str:
        return self.target.model

    @property
    def version(self) -> int:
        return self.target.version

    @property
    def served(self) -> ServedModel:
        return self.target.served

    @property
    def metrics(self) -> Metrics:
        return self.dispatch.metrics

    async def run(self, options: Options | None = None) -> tuple[Feeds, Parameters]:
        return await self.dispatch.run(self.target, self.request, options or {}, self.deadline)

    async def stage(self, name: str, feeds: Feeds, rows: int) -> Feeds:
        return await self.dispatch.stage(self.target, name, feeds, rows, self.deadline)

    def respond(self, outputs: Sequence[Tensor], parameters: Parameters) -> InferResponse:
        return InferResponse(
            self.model, str(self.version), list(outputs), self.request.id, parameters
        )


def _input_size(request: InferRequest) -> int:
    """Bytes of input: numeric tensors' buffers, BYTES tensors' strings."""
    size = 0
    for tensor in request.inputs:
        data = tensor.data
        size += sum(map(len, data.ravel().tolist())) if data.dtype.kind == "O" else data.nbytes
    return size


def _prepare(
    target: ModelVersion, request: InferRequest, options: Options
) -> tuple[Feeds, int, Parameters]:
    """Check the inputs' names, decode them into the model's feeds (the task's decoding), and
    check the batch they make."""
    config = target.config
    specs = {spec.name: spec for spec in config.inputs}
    given = {tensor.name: tensor for tensor in request.inputs}
    for name in given:
        if name not in specs:
            raise InvalidInputError(
                f"model '{target.model}' has no input '{name}'; inputs: {', '.join(specs)}"
            )
    for name in specs:
        if name not in given:
            raise InvalidInputError(f"model '{target.model}' needs input '{name}'")
    decoded = target.served.decode({name: given[name] for name in specs}, options)
    feeds = decoded.feeds
    rows = {array.shape[0] for array in feeds.values()}
    if len(rows) != 1:
        raise InvalidInputError(f"inputs disagree on the batch size: {sorted(rows)}")
    (count,) = rows
    limit = config.batching.max_batch_size
    if count == 0:
        raise InvalidInputError("the batch is empty (first dimension 0)")
    if count > limit:
        raise InvalidInputError(
            f"batch of {count} rows exceeds max_batch_size {limit} of model '{target.model}'"
        )
    return feeds, count, dict(decoded.parameters)
