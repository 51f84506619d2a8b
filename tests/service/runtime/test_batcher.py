"""The batcher on a real ORT session, in-process: merging, splitting, queue bounds, isolation."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest

from surety_serving.errors import (
    DeadlineExceededError,
    DrainingError,
    InferenceFailedError,
    QueueFullError,
)
from surety_serving.metrics import Metrics
from surety_serving.runtime import batcher as batcher_module
from surety_serving.runtime.batcher import Batcher, BatchPolicy
from surety_serving.runtime.session import Feeds

pytestmark = pytest.mark.model


def feeds(images: np.ndarray) -> Feeds:
    return {"image": images, "scale": np.ones((len(images), 1), dtype=np.float32)}


def make(run, policy: BatchPolicy, slots: int = 2) -> tuple[Batcher, ThreadPoolExecutor]:
    executor = ThreadPoolExecutor(slots)
    return Batcher(
        "digits", run, executor, slots, policy, Metrics().for_batcher("digits")
    ), executor


POLICY = BatchPolicy(max_batch_size=16, max_queue_delay_s=0.002, max_queue_size=64)


def test_merged_results_equal_single_runs(direct, images):
    seen_rows: list[int] = []

    def run(batch: Feeds) -> Feeds:
        seen_rows.append(len(batch["image"]))
        return direct.run(batch)

    async def main() -> list[Feeds]:
        batcher, executor = make(run, POLICY)
        batcher.start()
        parts = [images[i : i + 1 + i % 3] for i in range(40)]
        try:
            return await asyncio.gather(*(batcher.submit(feeds(p), len(p)) for p in parts))
        finally:
            await batcher.stop()
            executor.shutdown()

    results = asyncio.run(main())
    for i, result in enumerate(results):
        part = images[i : i + 1 + i % 3]
        np.testing.assert_allclose(result["logits"], direct.run(feeds(part))["logits"], atol=1e-5)
    assert max(seen_rows) > 3  # requests were merged
    assert max(seen_rows) <= POLICY.max_batch_size
    assert sum(seen_rows) == sum(1 + i % 3 for i in range(40))


def test_without_merging_every_request_runs_alone(direct, images):
    seen_rows: list[int] = []

    def run(batch: Feeds) -> Feeds:
        seen_rows.append(len(batch["image"]))
        return direct.run(batch)

    async def main() -> None:
        policy = BatchPolicy(16, 0.002, 64, merge=False)
        batcher, executor = make(run, policy)
        batcher.start()
        await asyncio.gather(*(batcher.submit(feeds(images[:2]), 2) for _ in range(10)))
        await batcher.stop()
        executor.shutdown()

    asyncio.run(main())
    assert seen_rows == [2] * 10


def test_full_queue_is_refused(direct, images):
    async def main() -> list[Any]:
        batcher, executor = make(direct.run, BatchPolicy(16, 0.002, max_queue_size=4))
        batcher.start()
        # Submitted in one go, before the worker runs: four fit in the queue, two do not.
        results = await asyncio.gather(
            *(batcher.submit(feeds(images[:1]), 1) for _ in range(6)), return_exceptions=True
        )
        await batcher.stop()
        executor.shutdown()
        return results

    results = asyncio.run(main())
    assert sum(isinstance(r, QueueFullError) for r in results) == 2
    assert sum(isinstance(r, dict) for r in results) == 4


def test_a_failing_request_does_not_fail_its_batch(direct, images):
    def run(batch: Feeds) -> Feeds:
        # Rows of 15s stand in for input ORT cannot run; the real session does the rest.
        if (batch["image"] == 15).all(axis=1).any():
            raise RuntimeError("ORT failure")
        return direct.run(batch)

    async def main() -> list[Any]:
        batcher, executor = make(run, POLICY)
        batcher.start()
        parts = [
            np.full((1, 64), 15, np.float32) if i == 3 else images[i : i + 1] for i in range(8)
        ]
        results = await asyncio.gather(
            *(batcher.submit(feeds(p), 1) for p in parts), return_exceptions=True
        )
        await batcher.stop()
        executor.shutdown()
        return results

    results = asyncio.run(main())
    assert isinstance(results[3], InferenceFailedError)
    for i, result in enumerate(results):
        if i != 3:
            assert isinstance(result, dict)
            expected = direct.run(feeds(images[i : i + 1]))["logits"]
            np.testing.assert_allclose(result["logits"], expected, atol=1e-5)


def test_different_signatures_never_share_a_batch(direct, images):
    seen: list[tuple[int, ...]] = []

    def run(batch: Feeds) -> Feeds:
        seen.append(batch["image"].shape)
        return {"echo": batch["image"]}

    async def main() -> None:
        batcher, executor = make(run, POLICY)
        batcher.start()
        wide = {"image": np.zeros((1, 8), np.float32)}
        narrow = {"image": np.zeros((1, 4), np.float32)}
        await asyncio.gather(*(batcher.submit(wide if i % 2 else narrow, 1) for i in range(10)))
        await batcher.stop()
        executor.shutdown()

    asyncio.run(main())
    assert {shape[1] for shape in seen} == {4, 8}
    assert sum(shape[0] for shape in seen) == 10


# -- sequence feeds (text models): padding on merge, batches grouped by length ----------------

PAD = {"input_ids": 7, "attention_mask": 0}


def sequence(length: int, seed: int) -> Feeds:
    """One row of a text model's feeds: token ids 10.. and a full attention mask."""
    ids = np.random.default_rng(seed).integers(10, 1000, size=(1, length), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": np.ones((1, length), np.int64)}


def masked_sums(batch: Feeds) -> Feeds:
    """A real computation whose answer padding must not change: per-row sums over the mask."""
    mask = batch["attention_mask"]
    return {"sum": (batch["input_ids"] * mask).sum(axis=1), "length": mask.sum(axis=1)}


def test_sequences_of_different_lengths_are_padded_when_merged():
    batches: list[Feeds] = []

    def run(batch: Feeds) -> Feeds:
        batches.append(batch)
        return masked_sums(batch)

    lengths = [1 + (i * 7) % 30 for i in range(40)]
    policy = BatchPolicy(16, 0.002, 64, max_length_ratio=100.0)

    async def main() -> list[Feeds]:
        executor = ThreadPoolExecutor(1)
        metrics = Metrics().for_batcher("text")
        batcher = Batcher("text", run, executor, 1, policy, metrics, pad=PAD)
        batcher.start()
        try:
            return await asyncio.gather(
                *(batcher.submit(sequence(n, i), 1) for i, n in enumerate(lengths))
            )
        finally:
            await batcher.stop()
            executor.shutdown()

    results = asyncio.run(main())
    for i, (n, result) in enumerate(zip(lengths, results, strict=True)):
        np.testing.assert_array_equal(result["sum"], masked_sums(sequence(n, i))["sum"])
        assert result["length"].tolist() == [n]
    merged = [b for b in batches if len(b["input_ids"]) > 1]
    assert merged, "requests were merged"
    for batch in merged:
        lengths_in = batch["attention_mask"].sum(axis=1)
        assert batch["input_ids"].shape[1] == lengths_in.max()  # padded to the longest only
        padding = batch["attention_mask"] == 0
        assert (batch["input_ids"][padding] == PAD["input_ids"]).all()
    assert any(len(set(b["attention_mask"].sum(axis=1).tolist())) > 1 for b in merged)


def test_batches_group_requests_of_similar_length():
    gate = threading.Event()
    batches: list[list[int]] = []

    def run(batch: Feeds) -> Feeds:
        gate.wait(10)
        batches.append(batch["attention_mask"].sum(axis=1).tolist())
        return masked_sums(batch)

    lengths = [4, 100, 5, 90, 4, 6, 95, 4, 40]
    policy = BatchPolicy(32, 0.002, 64, max_length_ratio=2.0)

    async def main() -> None:
        executor = ThreadPoolExecutor(1)
        metrics = Metrics().for_batcher("text")
        batcher = Batcher("text", run, executor, 1, policy, metrics, pad=PAD)
        batcher.start()
        blocker = asyncio.ensure_future(batcher.submit(sequence(3, 0), 1))
        await asyncio.sleep(0.05)  # the only slot is busy: the rest queue up together
        rest = [asyncio.ensure_future(batcher.submit(sequence(n, 1), 1)) for n in lengths]
        await asyncio.sleep(0.05)
        gate.set()
        await asyncio.gather(blocker, *rest)
        await batcher.stop()
        executor.shutdown()

    asyncio.run(main())
    assert batches[0] == [3]
    # The oldest queued request (4) anchors the next batch and the short ones join it; the long
    # ones form their own; 40 (100 / 40 > 2) waits for the next.
    assert sorted(batches[1]) == [4, 4, 4, 5, 6]
    assert sorted(batches[2]) == [90, 95, 100]
    assert batches[3:] == [[40]]
    for batch in batches:
        assert max(batch) <= policy.max_length_ratio * min(batch)


def slowed(direct, seconds: float, seen: list[int] | None = None):
    """The real session, taking at least ``seconds`` per run (a slow model)."""

    def run(batch: Feeds) -> Feeds:
        if seen is not None:
            seen.append(len(batch["image"]))
        time.sleep(seconds)
        return direct.run(batch)

    return run


def test_a_request_whose_deadline_passes_in_the_queue_never_runs(direct, images):
    seen: list[int] = []

    async def main() -> list[Any]:
        # One slot, no merging: the first request holds the slot for 0.3 s; the second's
        # deadline passes while it waits; the third has time.
        batcher, executor = make(slowed(direct, 0.3, seen), BatchPolicy(16, 0, 64, merge=False), 1)
        batcher.start()
        now = time.monotonic()
        first = asyncio.create_task(batcher.submit(feeds(images[:1]), 1, now + 5))
        await asyncio.sleep(0.05)
        results = await asyncio.gather(
            batcher.submit(feeds(images[:2]), 2, now + 0.1),
            batcher.submit(feeds(images[:3]), 3, now + 5),
            return_exceptions=True,
        )
        waited = time.monotonic() - now
        await first
        await batcher.stop()
        executor.shutdown()
        return [*results, waited]

    expired, served, waited = asyncio.run(main())
    assert isinstance(expired, DeadlineExceededError)
    assert "deadline passed" in str(expired)
    assert isinstance(served, dict)
    assert seen == [1, 3]  # the expired request of 2 rows never ran
    assert waited < 1.5


def test_a_deadline_already_past_is_refused_at_once(direct, images):
    async def main() -> None:
        batcher, executor = make(direct.run, POLICY)
        batcher.start()
        try:
            with pytest.raises(DeadlineExceededError):
                await batcher.submit(feeds(images[:1]), 1, time.monotonic() - 0.001)
        finally:
            await batcher.stop()
            executor.shutdown()

    asyncio.run(main())


def test_admission_follows_the_measured_rate(direct, images):
    """After a few batches at ~20 rows/s, a queue of 8 rows is ~0.4 s of work: a request with
    a 0.1 s budget is refused at once, one with 5 s is taken."""

    async def main() -> None:
        batcher, executor = make(slowed(direct, 0.05), BatchPolicy(1, 0, 64), 1)
        batcher.start()
        try:
            assert batcher.expected_wait(1) == 0.0  # nothing measured yet: admit
            await asyncio.gather(*(batcher.submit(feeds(images[:1]), 1) for _ in range(3)))
            queued = [asyncio.create_task(batcher.submit(feeds(images[:1]), 1)) for _ in range(8)]
            await asyncio.sleep(0)
            assert 0.2 < batcher.expected_wait(1) < 1.0
            started = time.monotonic()
            with pytest.raises(QueueFullError, match="longer than the request's 100 ms"):
                await batcher.submit(feeds(images[:1]), 1, time.monotonic() + 0.1)
            assert time.monotonic() - started < 0.05  # refused without waiting
            assert isinstance(
                await batcher.submit(feeds(images[:1]), 1, time.monotonic() + 5), dict
            )
            await asyncio.gather(*queued)
        finally:
            await batcher.stop()
            executor.shutdown()

    asyncio.run(main())


def test_fail_all_answers_queued_and_running_requests(direct, images):
    async def main() -> list[Any]:
        batcher, executor = make(slowed(direct, 0.2), BatchPolicy(1, 0, 64), 1)
        batcher.start()
        tasks = [asyncio.create_task(batcher.submit(feeds(images[:1]), 1)) for _ in range(4)]
        await asyncio.sleep(0.05)  # the first is running, three wait
        batcher.fail_all(DrainingError("shutting down"))
        results = await asyncio.gather(*tasks, return_exceptions=True)
        await batcher.stop()
        executor.shutdown()
        return results

    results = asyncio.run(main())
    assert all(isinstance(r, DrainingError) for r in results)


def test_expiring_requests_leave_the_batcher_serving(direct, images):
    """Requests whose deadlines pass while the worker lingers for company (or takes a batch)
    must not disturb it: later requests are still served."""

    async def main() -> list[Any]:
        batcher, executor = make(slowed(direct, 0.05), BatchPolicy(4, 0.05, 256), 2)
        batcher.start()
        try:
            now = time.monotonic()
            expiring = await asyncio.gather(
                *(batcher.submit(feeds(images[:1]), 1, now + 0.005 * (i % 40)) for i in range(120)),
                return_exceptions=True,
            )
            later = await asyncio.wait_for(
                batcher.submit(feeds(images[:1]), 1, time.monotonic() + 5), 5
            )
            return [*expiring, later]
        finally:
            await batcher.stop()
            executor.shutdown()

    *expiring, later = asyncio.run(main())
    assert isinstance(later, dict)
    assert {type(r) for r in expiring} <= {dict, DeadlineExceededError}
    assert any(isinstance(r, DeadlineExceededError) for r in expiring)


def threads_running(direct, ran_on: list[str]):
    """The real session, noting the thread each run happened on."""

    def run(batch: Feeds) -> Feeds:
        ran_on.append(threading.current_thread().name)
        return direct.run(batch)

    return run


def test_a_lone_batch_1_request_of_a_fast_model_runs_inline(direct, images, monkeypatch):
    """The first run is measured in the executor; then lone batch-1 requests run on the loop,
    with the same answers; requests with company, or of more rows, still go through the
    executor. (The threshold is raised so that a busy machine cannot make digits "slow".)"""
    monkeypatch.setattr(batcher_module, "INLINE_RUN_S", 1.0)
    ran_on: list[str] = []

    async def main() -> list[Feeds]:
        batcher, executor = make(threads_running(direct, ran_on), POLICY)
        batcher.start()
        try:
            results = [await batcher.submit(feeds(images[i : i + 1]), 1, alone=True)
                       for i in range(4)]  # fmt: skip
            await batcher.submit(feeds(images[:2]), 2, alone=True)
            await batcher.submit(feeds(images[:1]), 1, alone=False)
            return results
        finally:
            await batcher.stop()
            executor.shutdown()

    results = asyncio.run(main())
    loop_thread = threading.current_thread().name
    assert ran_on[0] != loop_thread  # measured first
    assert ran_on[1:4] == [loop_thread] * 3
    assert ran_on[4] != loop_thread and ran_on[5] != loop_thread
    for i, result in enumerate(results):
        np.testing.assert_array_equal(
            result["logits"], direct.run(feeds(images[i : i + 1]))["logits"]
        )


def test_a_slow_model_never_runs_inline(direct, images):
    ran_on: list[str] = []

    def run(batch: Feeds) -> Feeds:
        time.sleep(0.002)  # past INLINE_RUN_S
        return threads_running(direct, ran_on)(batch)

    async def main() -> None:
        batcher, executor = make(run, POLICY)
        batcher.start()
        for i in range(4):
            await batcher.submit(feeds(images[i : i + 1]), 1, alone=True)
        await batcher.stop()
        executor.shutdown()

    asyncio.run(main())
    assert threading.current_thread().name not in ran_on


def test_an_inline_failure_is_an_inference_failure(direct, images):
    calls = []

    def run(batch: Feeds) -> Feeds:
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("ORT broke")
        return direct.run(batch)

    async def main() -> None:
        batcher, executor = make(run, POLICY)
        batcher.start()
        try:
            await batcher.submit(feeds(images[:1]), 1, alone=True)
            with pytest.raises(InferenceFailedError):
                await batcher.submit(feeds(images[:1]), 1, alone=True)
        finally:
            await batcher.stop()
            executor.shutdown()

    asyncio.run(main())


def test_without_merging_batch_1_requests_run_inline_even_with_company(direct, images, monkeypatch):
    monkeypatch.setattr(batcher_module, "INLINE_RUN_S", 1.0)
    ran_on: list[str] = []

    async def main() -> None:
        policy = BatchPolicy(16, 0.002, 64, merge=False)
        batcher, executor = make(threads_running(direct, ran_on), policy)
        batcher.start()
        for i in range(3):
            await batcher.submit(feeds(images[i : i + 1]), 1, alone=False)
        await batcher.stop()
        executor.shutdown()

    asyncio.run(main())
    assert ran_on[1:] == [threading.current_thread().name] * 2
