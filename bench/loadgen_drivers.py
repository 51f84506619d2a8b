"""The load generator's drivers: closed-loop clients, open-loop arrivals and the liveness prober,
run together on one event loop (uvloop's when installed) over the kit's keep-alive connections.

- **closed loop**: N clients, each sends a request, waits for the answer, sends the next. On 429
  or 503 a client sleeps ``Retry-After`` seconds before its next request (a well-behaved
  client); ``ignore_retry_after`` resends at once (hostile hammering).
- **open loop**: arrivals at a fixed rate (Poisson or evenly spaced), sent over a bounded pool of
  connections. Latency is measured from the arrival's scheduled time, so a client-side backlog
  shows up in the figures instead of silently lowering the offered rate (coordinated omission).

Alongside either, a liveness prober GETs ``/v2/health/live`` on its own connection every 50 ms.
Part of bench/loadgen.py (the command line); bench/loadgen_report.py holds the figures.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from loadgen_report import REJECTIONS, Recorder, Report, Run

from surety_kit.wire import CONNECTION_ERRORS, Connection, Endpoint, http_request

T = TypeVar("T")

LIVENESS_PATH = "/v2/health/live"
# After a failed connect or a dropped connection: long enough not to spin, short against a run.
RECONNECT_BACKOFF_S = 0.05


@dataclass(frozen=True)
class ClosedLoop:
    """N clients back to back on pre-built requests."""

    name: str
    requests: Sequence[bytes]
    clients: int
    ignore_retry_after: bool = False


@dataclass(frozen=True)
class OpenLoop:
    """Arrivals at ``rate`` per second over at most ``connections`` connections.

    Arrivals that find ``backlog`` others waiting for a connection are dropped (counted), so
    a server that stalls cannot make the generator's memory grow without bound.
    """

    name: str
    requests: Sequence[bytes]
    rate: float
    connections: int = 256
    arrivals: str = "poisson"  # or "fixed"
    backlog: int = 10_000
    seed: int = 0


Load = ClosedLoop | OpenLoop


async def _sleep_until(deadline: float) -> None:
    delay = deadline - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)


async def _closed_client(
    endpoint: Endpoint, load: ClosedLoop, offset: int, recorder: Recorder
) -> None:
    connection = Connection(endpoint)
    requests = load.requests
    index = offset
    in_flight: float | None = None  # send time of the request awaiting its answer
    try:
        while (now := time.perf_counter()) < recorder.stop:
            try:
                await connection.ensure()
                in_flight = time.perf_counter()
                response = await connection.exchange(requests[index % len(requests)])
            except CONNECTION_ERRORS as exc:
                recorder.error(in_flight or now, exc)
                in_flight = None
                connection.close()
                await asyncio.sleep(RECONNECT_BACKOFF_S)
                continue
            done = time.perf_counter()
            recorder.response(in_flight, done, response)
            in_flight = None
            index += 1
            if (
                response.status in REJECTIONS
                and response.retry_after
                and not load.ignore_retry_after
            ):
                await _sleep_until(min(done + response.retry_after, recorder.stop))
    except asyncio.CancelledError:
        if in_flight is not None:
            recorder.cancelled(in_flight)
        raise
    finally:
        connection.close()


async def _open_loop(endpoint: Endpoint, load: OpenLoop, recorder: Recorder) -> None:
    queue: asyncio.Queue[float | None] = asyncio.Queue()
    requests = load.requests

    async def worker(offset: int) -> None:
        connection = Connection(endpoint)
        index = offset
        in_flight: float | None = None  # scheduled time of the request awaiting its answer
        try:
            while (scheduled := await queue.get()) is not None:
                in_flight = scheduled
                try:
                    await connection.ensure()
                    response = await connection.exchange(requests[index % len(requests)])
                except CONNECTION_ERRORS as exc:
                    in_flight = None
                    recorder.error(scheduled, exc)
                    connection.close()
                    continue
                in_flight = None
                index += 1
                recorder.response(scheduled, time.perf_counter(), response)
        except asyncio.CancelledError:
            if in_flight is not None:
                recorder.cancelled(in_flight)
            raise
        finally:
            connection.close()

    workers = [
        asyncio.create_task(worker(i * 7919)) for i in range(load.connections)
    ]  # coprime offsets: connections do not send the same payloads in step
    rng = random.Random(load.seed)
    gap = 1.0 / load.rate
    arrival = time.perf_counter()
    try:
        while arrival < recorder.stop:
            now = time.perf_counter()
            # Timers fire late by up to a millisecond: emit every arrival that is due, each
            # with its exact scheduled time, then sleep until the next one.
            while arrival <= now and arrival < recorder.stop:
                if queue.qsize() >= load.backlog:
                    if recorder.start <= arrival < recorder.stop:
                        recorder.dropped += 1
                else:
                    queue.put_nowait(arrival)
                arrival += rng.expovariate(load.rate) if load.arrivals == "poisson" else gap
            await _sleep_until(min(arrival, recorder.stop))
        for _ in workers:
            queue.put_nowait(None)
        await asyncio.gather(*workers)
    finally:
        for task in workers:
            task.cancel()
        # Let cancelled workers count their unfinished requests before the report is taken.
        await asyncio.gather(*workers, return_exceptions=True)


async def _prober(endpoint: Endpoint, recorder: Recorder, interval: float) -> None:
    connection = Connection(endpoint)
    request = http_request(endpoint, "GET", LIVENESS_PATH)
    tick = time.perf_counter()
    in_flight: float | None = None
    try:
        while tick < recorder.stop:
            await _sleep_until(tick)
            in_flight = time.perf_counter()
            try:
                await connection.ensure()
                response = await connection.exchange(request)
            except CONNECTION_ERRORS as exc:
                recorder.error(in_flight, exc)
                connection.close()
            else:
                # From before the connect: a probe that cannot connect is a slow probe.
                recorder.response(in_flight, time.perf_counter(), response)
            in_flight = None
            # A slow answer skips the probes it overran rather than firing them in a burst.
            tick = max(tick + interval, time.perf_counter())
    except asyncio.CancelledError:
        if in_flight is not None:
            recorder.cancelled(in_flight)
        raise
    finally:
        connection.close()


async def run_async(
    endpoint: Endpoint,
    loads: Sequence[Load],
    *,
    duration: float,
    warmup: float = 3.0,
    grace: float = 30.0,
    probe_interval: float | None = 0.05,
) -> Run:
    """Offer ``loads`` at once; measure ``duration`` s after ``warmup`` s.

    After the window no new requests are sent; requests in flight get ``grace`` s to finish
    (their latencies count) and are then cancelled (counted as unfinished).
    """
    started = time.perf_counter()
    start, stop = started + warmup, started + warmup + duration
    recorders = {load.name: Recorder(start, stop) for load in loads}
    liveness = Recorder(start, stop)
    tasks: list[asyncio.Task[None]] = []
    if probe_interval is not None:
        # First, so that its connection is not queued behind a thousand others.
        tasks.append(asyncio.create_task(_prober(endpoint, liveness, probe_interval)))
    for load in loads:
        recorder = recorders[load.name]
        if isinstance(load, ClosedLoop):
            # Spread the clients' payload offsets so their batches mix request sizes.
            step = max(1, len(load.requests) // max(1, load.clients))
            tasks += [
                asyncio.create_task(_closed_client(endpoint, load, i * step, recorder))
                for i in range(load.clients)
            ]
        else:
            tasks.append(asyncio.create_task(_open_loop(endpoint, load, recorder)))
    await _sleep_until(start)
    cpu_start = time.process_time()
    await _sleep_until(stop)
    cpu = time.process_time() - cpu_start
    _done, pending = await asyncio.wait(tasks, timeout=grace)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in tasks:
        if not task.cancelled() and (exc := task.exception()) is not None:
            raise exc
    return Run(
        loads={name: Report.of(name, recorder) for name, recorder in recorders.items()},
        liveness=Report.of("liveness", liveness),
        seconds=duration,
        client_cpu_s=cpu,
    )


def run_sync(awaitable: Awaitable[T]) -> T:
    """Run a coroutine on a fresh event loop, uvloop's when installed (less CPU per request)."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        factory = None
    else:
        factory = uvloop.new_event_loop

    async def main() -> T:
        return await awaitable

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def run(endpoint: Endpoint, loads: Sequence[Load], **options: Any) -> Run:
    """``run_async`` from synchronous code (see its options)."""
    return run_sync(run_async(endpoint, loads, **options))
