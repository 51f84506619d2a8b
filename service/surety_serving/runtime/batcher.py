"""Dynamic batching: concurrent requests to one model version merged into one ORT run.

Requests join a queue only after validation, so a batch holds valid requests only. A worker
takes queued requests whenever an execution slot is free (one slot per inference thread), merges
those with the same feed signature (names, dtypes, trailing dims) up to ``max_batch_size`` rows,
runs them in the executor and splits the outputs back by row ranges, in order.

Sequence feeds (a text model's ``input_ids`` and ``attention_mask``, listed with their pad values
in ``pad``) may differ in length (axis 1): the merge pads them to the batch's longest with the pad
value (attention 0, so padding changes no row's answer), at the end, or with ``pad_left`` at the
start (a causal judge reads its answer at the last position, which must stay the last column).
To keep short texts from being padded to a rare long one, a batch holds requests whose lengths
stay within ``max_length_ratio`` of each other (longest / shortest): the oldest request anchors
the batch, and the queued ones nearest to it in length join first. The oldest request always
runs next, so none starves.

``max_queue_delay`` is the longest a request waits for company; like Triton's it bounds the added
latency, but the wait happens only while another batch of the model is running: a lone request on
an idle model runs at once, so batching costs nothing at low load.

Admission: the queue takes a request only if the work queued ahead of it can finish before its
deadline. The batcher measures its own rate (rows per second of one execution slot, a moving
average over recent batches), so the queue bound follows the model, the machine and the batch
sizes that load produces, instead of a fixed count (``max_queue_size`` stays as a memory ceiling).
A request whose deadline passes while it waits leaves the queue at once (504) and never runs.

Inline runs: a batch-1 request that would run alone anyway (merging off; or it is its model's
only one in flight, with nothing queued or running) runs on the event loop when the model's
batch-1 run is measured to take at most ``INLINE_RUN_S``. Handing it
to the executor and back costs a futex wake, a self-pipe write and two thread switches, which for
a small model is more CPU than the run itself (docs/benchmarks.md, Fast path). A model that runs
longer, or a request that could share a batch, goes through the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from surety_serving.errors import (
    DeadlineExceededError,
    DrainingError,
    InferenceFailedError,
    QueueFullError,
)
from surety_serving.metrics import BatchMetrics
from surety_serving.runtime.session import Feeds

log = logging.getLogger(__name__)

Signature = tuple[tuple[str, str, tuple[int, ...]], ...]


def signature(feeds: Feeds, padded: Collection[str] = ()) -> Signature:
    """What must agree for requests to share a batch: names, dtypes and non-batch dims (the
    sequence axis of padded feeds excepted)."""
    return tuple(
        sorted(
            (n, a.dtype.str, a.shape[2:] if n in padded else a.shape[1:]) for n, a in feeds.items()
        )
    )


def sequence_length(feeds: Feeds, padded: Collection[str]) -> int:
    """The longest axis 1 among the padded feeds (0 for a model without any)."""
    return max((a.shape[1] for n, a in feeds.items() if n in padded), default=0)


#: Weight of the newest batch in the rate estimate: about the last ten batches count.
RATE_SMOOTHING = 0.2
#: A lone batch-1 request runs on the event loop if the model's batch-1 runs take at most this
#: long (a moving average): the loop is held no longer than a small JSON body's decoding.
INLINE_RUN_S = 250e-6


@dataclass(eq=False)
class _Pending:
    feeds: Feeds
    rows: int
    signature: Signature
    length: int
    future: asyncio.Future[Feeds]
    enqueued: float = field(default_factory=time.monotonic)
    taken: bool = False  # left the queue: into a batch, or dropped as done


@dataclass(frozen=True)
class BatchPolicy:
    """The batching settings of one model version."""

    max_batch_size: int
    max_queue_delay_s: float
    max_queue_size: int
    merge: bool = True
    max_length_ratio: float = 2.0


class Batcher:
    """Queue, merge and run requests of one model version; start() inside the event loop."""

    def __init__(
        self,
        name: str,
        run: Callable[[Feeds], Feeds],
        executor: Executor,
        slots: int,
        policy: BatchPolicy,
        metrics: BatchMetrics,
        pad: Mapping[str, int] | None = None,
        pad_left: bool = False,
    ) -> None:
        self.name = name
        self._pad = dict(pad or {})
        self._pad_left = pad_left
        self._run = run
        self._executor = executor
        self._policy = policy
        self._metrics = metrics
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0  # rows of the queued requests whose futures are not done
        self._slot_count = slots
        self._slots = asyncio.Semaphore(slots)
        self._running = 0
        self._executing: set[_Pending] = set()
        #: Rows per second of one slot, measured; None until the first batch finishes.
        self._rows_per_s: float | None = None
        #: Seconds of one batch-1 run (the session alone, no hand-over), measured.
        self._single_run_s: float | None = None
        self._wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start the worker task on the running loop."""
        self._worker = asyncio.create_task(self._work(), name=f"batcher:{self.name}")

    async def stop(self) -> None:
        """Stop taking batches; batches already running finish first."""
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self.fail_all(DrainingError(f"model '{self.name}' stopped: the server is shutting down"))

    def fail_all(self, exc: Exception) -> None:
        """Answer every queued and running request with ``exc`` (the shutdown bound)."""
        for pending in (*self._queue, *self._executing):
            if not pending.future.done():
                pending.future.set_exception(exc)
        self._queue.clear()
        self._queued_rows = 0

    def expected_wait(self, rows: int) -> float:
        """Seconds until ``rows`` more rows would be answered, at the measured rate."""
        if self._rows_per_s is None:
            return 0.0
        return (self._queued_rows + rows) / (self._rows_per_s * self._slot_count)

    def admit(self, rows: int, remaining: float | None) -> None:
        """Raise QueueFullError unless ``rows`` more rows can finish within ``remaining`` s
        (DeadlineExceededError if no time remains)."""
        if remaining is not None and remaining <= 0:
            raise DeadlineExceededError(f"the deadline passed before model '{self.name}' ran")
        if len(self._queue) >= self._policy.max_queue_size:
            raise QueueFullError(
                f"model '{self.name}' has {len(self._queue)} requests queued; retry later"
            )
        wait = self.expected_wait(rows)
        if remaining is not None and wait > remaining:
            raise QueueFullError(
                f"model '{self.name}' is busy: the queued work takes about {wait * 1e3:.0f} ms, "
                f"longer than the request's {remaining * 1e3:.0f} ms deadline; retry later"
            )

    async def submit(
        self, feeds: Feeds, rows: int, deadline: float | None = None, alone: bool = False
    ) -> Feeds:
        """Queue validated feeds of ``rows`` rows and wait for their outputs.

        ``deadline`` (``time.monotonic()`` seconds) is when the client stops waiting: the
        request is refused if the queue cannot finish it by then, and leaves the queue (504)
        if it is still there when the deadline passes. ``alone``: the request is its model's
        only one in flight, so it may run inline (see the module's docstring).
        """
        remaining = None if deadline is None else deadline - time.monotonic()
        self.admit(rows, remaining)
        if rows == 1 and self._inline_is_cheaper(alone):
            return self._infer_inline(feeds)
        future: asyncio.Future[Feeds] = asyncio.get_running_loop().create_future()
        pending = _Pending(
            feeds, rows, signature(feeds, self._pad), sequence_length(feeds, self._pad), future
        )
        self._queue.append(pending)
        self._queued_rows += rows
        self._wakeup.set()
        try:
            async with asyncio.timeout(remaining):
                return await future
        except TimeoutError:
            # The timeout cancelled the future: _take drops it from the queue unrun. Only the
            # worker changes the queue itself (it may be lingering on the queue's head).
            if not pending.taken:
                self._queued_rows -= rows
            waited = (time.monotonic() - pending.enqueued) * 1e3
            raise DeadlineExceededError(
                f"the deadline passed after {waited:.0f} ms waiting for model '{self.name}'"
            ) from None

    def _inline_is_cheaper(self, alone: bool) -> bool:
        """Batch-1 runs measured short enough, and the request would run alone anyway: merging
        is off, or it is the model's only request and nothing is queued or running."""
        run_s = self._single_run_s
        if run_s is None or run_s > INLINE_RUN_S:
            return False
        return not self._policy.merge or (alone and not self._running and not self._queue)

    def _infer_inline(self, feeds: Feeds) -> Feeds:
        self._metrics.queue_duration.observe(0.0)
        outputs, run_s = self._timed_run(feeds, 1)
        self._record(1, run_s, run_s)
        return outputs

    async def _work(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                batch = await self._gather()
            except BaseException:
                self._slots.release()
                raise
            self._running += 1
            task = asyncio.create_task(self._execute(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _gather(self) -> list[_Pending]:
        """Wait for requests, then take a batch (never empty)."""
        while True:
            while not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            # Handlers that are already runnable get one turn to join before the batch closes.
            await asyncio.sleep(0)
            if self._policy.merge and self._running and self._policy.max_queue_delay_s > 0:
                await self._linger()
            batch = self._take()
            if batch:
                return batch

    async def _linger(self) -> None:
        deadline = self._queue[0].enqueued + self._policy.max_queue_delay_s
        while self._queued_rows < self._policy.max_batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    def _take(self) -> list[_Pending]:
        """The oldest request and the queued ones that fit with it: same signature, at most
        max_batch_size rows, lengths within max_length_ratio; nearest in length first for
        models with sequences, arrival order otherwise."""
        live = []
        for pending in self._queue:
            if pending.future.done():  # its deadline passed, or the server is shutting down
                pending.taken = True
            else:
                live.append(pending)
        if not live:
            self._queue.clear()
            self._queued_rows = 0
            return []
        first, *others = live
        batch = [first]
        if self._policy.merge:
            rows, shortest, longest = first.rows, first.length, first.length
            if self._pad:
                anchor = math.log(max(first.length, 1))
                others.sort(key=lambda p: abs(math.log(max(p.length, 1)) - anchor))
            for pending in others:
                if rows == self._policy.max_batch_size:
                    break
                low, high = min(shortest, pending.length), max(longest, pending.length)
                if (
                    pending.signature == first.signature
                    and rows + pending.rows <= self._policy.max_batch_size
                    and high <= self._policy.max_length_ratio * low
                ):
                    batch.append(pending)
                    rows, shortest, longest = rows + pending.rows, low, high
        for pending in batch:
            pending.taken = True
        self._queue = deque(p for p in live if not p.taken)
        self._queued_rows = sum(p.rows for p in self._queue)
        return batch

    async def _execute(self, batch: list[_Pending]) -> None:
        self._executing.update(batch)
        try:
            started = time.monotonic()
            for pending in batch:
                self._metrics.queue_duration.observe(started - pending.enqueued)
            try:
                outputs = await self._infer(_merge(batch, self._pad, self._pad_left))
            except InferenceFailedError:
                if len(batch) == 1:
                    raise
                # Something in the merged run failed: run each request alone so only the
                # culprit fails and its neighbours still get answers.
                for pending in batch:
                    await self._execute_alone(pending)
                return
            offset = 0
            for pending in batch:
                part = {n: v[offset : offset + pending.rows] for n, v in outputs.items()}
                offset += pending.rows
                if not pending.future.done():
                    pending.future.set_result(part)
        except InferenceFailedError as exc:
            for pending in batch:
                if not pending.future.done():
                    pending.future.set_exception(exc)
        finally:
            self._executing.difference_update(batch)
            self._running -= 1
            self._slots.release()

    async def _execute_alone(self, pending: _Pending) -> None:
        try:
            result = await self._infer(pending.feeds)
        except InferenceFailedError as exc:
            if not pending.future.done():
                pending.future.set_exception(exc)
            return
        if not pending.future.done():
            pending.future.set_result(result)

    async def _infer(self, feeds: Feeds) -> Feeds:
        loop = asyncio.get_running_loop()
        rows = next(iter(feeds.values())).shape[0]
        started = time.monotonic()
        outputs, run_s = await loop.run_in_executor(self._executor, self._timed_run, feeds, rows)
        self._record(rows, time.monotonic() - started, run_s)
        return outputs

    def _timed_run(self, feeds: Feeds, rows: int) -> tuple[Feeds, float]:
        """The session's outputs and its own run time; its failures as InferenceFailedError."""
        started = time.perf_counter()
        try:
            outputs = self._run(feeds)
        except Exception as exc:
            log.exception("model '%s': ONNX Runtime failed on a batch of %d rows", self.name, rows)
            raise InferenceFailedError(f"inference failed for model '{self.name}'") from exc
        return outputs, time.perf_counter() - started

    def _record(self, rows: int, elapsed: float, run_s: float) -> None:
        """Fold a finished run into the rate estimates and the metrics; ``elapsed`` includes
        the hand-over to the executor, ``run_s`` is the session's alone."""
        rate = rows / max(elapsed, 1e-6)
        previous = self._rows_per_s
        self._rows_per_s = (
            rate if previous is None else previous + RATE_SMOOTHING * (rate - previous)
        )
        if rows == 1:
            single = self._single_run_s
            self._single_run_s = (
                run_s if single is None else single + RATE_SMOOTHING * (run_s - single)
            )
        self._metrics.inference_duration.observe(elapsed)
        self._metrics.batch_size.observe(rows)


def _merge(batch: list[_Pending], pad: Mapping[str, int], left: bool) -> Feeds:
    """Concatenate along the batch axis; padded feeds are first padded on axis 1 to the longest
    (at the start with ``left``)."""
    if len(batch) == 1:
        return batch[0].feeds
    merged: Feeds = {}
    for name in batch[0].feeds:
        parts = [p.feeds[name] for p in batch]
        if name in pad:
            width = max(part.shape[1] for part in parts)
            parts = [_pad_axis1(part, width, pad[name], left) for part in parts]
        merged[name] = np.concatenate(parts)
    return merged


def _pad_axis1(array: np.ndarray, width: int, value: int, left: bool) -> np.ndarray:
    if array.shape[1] == width:
        return array
    missing = width - array.shape[1]
    widths = [(0, 0), (missing, 0) if left else (0, missing)] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, widths, constant_values=value)
