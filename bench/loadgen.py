"""An asyncio HTTP/1.1 load generator for overload and soak measurements of a Surety server.

Two ways to offer load, both over keep-alive connections with pre-serialised requests:

- **closed loop**: N clients, each sends a request, waits for the answer, sends the next. On 429
  or 503 a client sleeps ``Retry-After`` seconds before its next request (a well-behaved
  client); ``ignore_retry_after`` resends at once (hostile hammering).
- **open loop**: arrivals at a fixed rate (Poisson or evenly spaced), sent over a bounded pool of
  connections. Latency is measured from the arrival's scheduled time, so a client-side backlog
  shows up in the figures instead of silently lowering the offered rate (coordinated omission).

Alongside either, a liveness prober GETs ``/v2/health/live`` on its own connection every 50 ms.

Everything runs on one event loop (uvloop when installed): a 1,024-connection generator must
not itself eat a 2-core machine, so there is no HTTP library per request, only a status line,
a few headers and a Content-Length body to parse. The report records, per status code, counts
and latency percentiles, accepted throughput (200s per second), connection errors, and the
generator's own CPU time (to tell when the client, not the server, is the bottleneck).

    .venv/bin/python bench/loadgen.py --url http://127.0.0.1:8000 --model digits --clients 1024
    .venv/bin/python bench/loadgen.py --model fortune-topics --rate 20 --duration 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import orjson

T = TypeVar("T")

DIGITS = "digits"
FORTUNE_TOPICS = "fortune-topics"
REJECTIONS = frozenset({429, 503})
EXPECTED = frozenset({200, *REJECTIONS})
LIVENESS_PATH = "/v2/health/live"

# uvicorn closes keep-alive connections idle for 5 s; reconnecting before that avoids sending a
# request into a connection the server is closing (which would read as a connection error).
KEEPALIVE_S = 4.0
# After a failed connect or a dropped connection: long enough not to spin, short against a run.
RECONNECT_BACKOFF_S = 0.05
CONNECT_TIMEOUT_S = 10.0


# --------------------------------------------------------------------------------------------
# Requests


@dataclass(frozen=True)
class Endpoint:
    """Where the server listens."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """``http://host:port`` → Endpoint (only plain HTTP is spoken)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"expected http://host:port, got {url!r}")
        return cls(parts.hostname, parts.port or 80)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def http_request(
    endpoint: Endpoint,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """One complete HTTP/1.1 request, head and body, ready to write."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {endpoint.host}:{endpoint.port}"]
    if body or method in ("POST", "PUT"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def score_body(tensor: Mapping[str, Any], timeout_ms: int | None) -> bytes:
    """An OIP request body with one input tensor and, if given, a deadline parameter."""
    request: dict[str, Any] = {"inputs": [tensor]}
    if timeout_ms is not None:
        request["parameters"] = {"timeout_ms": timeout_ms}
    return orjson.dumps(request, option=orjson.OPT_SERIALIZE_NUMPY)


def digits_requests(
    endpoint: Endpoint,
    *,
    count: int = 512,
    timeout_ms: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[bytes]:
    """Batch-1 ``/score`` requests of real digits (scikit-learn's bundled 8×8 set)."""
    from sklearn.datasets import load_digits

    images = load_digits().data.astype(np.float32)
    path = f"/v2/models/{DIGITS}/score"
    built = []
    for image in images[:count]:
        tensor = {"name": "image", "shape": [1, 64], "datatype": "FP32", "data": image}
        built.append(http_request(endpoint, "POST", path, score_body(tensor, timeout_ms), headers))
    return built


def fortune_texts() -> list[str]:
    """The fortunes test split (real entries of varying length), prepared as the build does."""
    from surety_serving.data.fortunes import prepare_fortunes, read_jsonl

    dataset = prepare_fortunes(log=lambda _: None)
    return [example.text for example in read_jsonl(dataset.test)]


def fortune_requests(
    endpoint: Endpoint,
    *,
    timeout_ms: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[bytes]:
    """Batch-1 ``/score`` requests of real fortune texts, shuffled so lengths vary per client."""
    texts = fortune_texts()
    random.Random(0).shuffle(texts)
    path = f"/v2/models/{FORTUNE_TOPICS}/score"
    built = []
    for text in texts:
        tensor = {"name": "text", "shape": [1], "datatype": "BYTES", "data": [text]}
        built.append(http_request(endpoint, "POST", path, score_body(tensor, timeout_ms), headers))
    return built


def model_requests(
    endpoint: Endpoint,
    model: str,
    *,
    timeout_ms: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[bytes]:
    """Pre-built requests for one of the default models."""
    if model == DIGITS:
        return digits_requests(endpoint, timeout_ms=timeout_ms, headers=headers)
    if model == FORTUNE_TOPICS:
        return fortune_requests(endpoint, timeout_ms=timeout_ms, headers=headers)
    raise ValueError(f"no payloads for model {model!r} (known: {DIGITS}, {FORTUNE_TOPICS})")


# --------------------------------------------------------------------------------------------
# Responses


@dataclass(frozen=True)
class Response:
    """What the generator needs of an answer."""

    status: int
    retry_after: float | None  # seconds; None when absent or not an integer
    close: bool


async def read_response(reader: asyncio.StreamReader) -> Response:
    """Read one response: status line, headers, then a Content-Length or chunked body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    retry_after: float | None = None
    close = chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"retry-after":
            with contextlib.suppress(ValueError):  # an HTTP-date is not what the contract says
                retry_after = float(int(value))
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    if chunked:
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    elif length:
        await reader.readexactly(length)
    return Response(status, retry_after, close)


class Connection:
    """One keep-alive connection that reconnects when dropped, closed, or idle too long."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last_used = 0.0

    async def _connect(self) -> None:
        self.close()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.endpoint.host, self.endpoint.port), CONNECT_TIMEOUT_S
        )
        self._reader, self._writer = reader, writer
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def ensure(self) -> None:
        """Connect if not connected, or if the server may be closing the idle connection."""
        if self._writer is None or time.perf_counter() - self._last_used > KEEPALIVE_S:
            await self._connect()

    async def exchange(self, request: bytes) -> Response:
        """Send one request and read its response on the current connection."""
        assert self._reader is not None and self._writer is not None
        self._writer.write(request)
        response = await read_response(self._reader)
        self._last_used = time.perf_counter()
        if response.close:
            self.close()
        return response

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


# Connection-level failures: counted by name, then the client reconnects.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,  # asyncio.IncompleteReadError: the server closed mid-response
    asyncio.LimitOverrunError,
    TimeoutError,
    ValueError,  # an unparsable status line or length
)


# --------------------------------------------------------------------------------------------
# Recording


@dataclass
class Recorder:
    """Responses of one load (or of the prober) in a measurement window.

    Latencies are recorded for requests sent (open loop: scheduled) inside the window; requests
    still in flight when it closes get a grace period, so the slowest are not dropped. Those
    sent during the warm-up are kept apart: the first second of a thousand clients connecting
    at once is a cold-start burst, not the steady state the window measures. Accepted
    throughput counts 200s *answered* inside the window. Connection errors, refusals without
    ``Retry-After`` and requests never answered count from the first request on.
    """

    start: float = float("inf")
    stop: float = float("inf")
    latencies: dict[int, list[float]] = field(default_factory=dict)
    warmup: dict[int, list[float]] = field(default_factory=dict)
    ok_in_window: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    missing_retry_after: int = 0
    retry_after: Counter[float] = field(default_factory=Counter)
    unfinished: int = 0
    dropped: int = 0

    def response(self, sent: float, done: float, response: Response) -> None:
        if self.start <= done <= self.stop and response.status == 200:
            self.ok_in_window += 1
        if sent >= self.stop:
            return
        bucket = self.latencies if sent >= self.start else self.warmup
        bucket.setdefault(response.status, []).append(done - sent)
        if response.status in REJECTIONS:
            if response.retry_after is None:
                self.missing_retry_after += 1
            else:
                self.retry_after[response.retry_after] += 1

    def error(self, at: float, exc: BaseException) -> None:
        if at < self.stop:
            self.errors[type(exc).__name__] += 1

    def cancelled(self, sent: float) -> None:
        """A request still unanswered when the run gave up on it."""
        if sent < self.stop:
            self.unfinished += 1


@dataclass(frozen=True)
class Latency:
    """Count and percentiles of a set of latencies, in milliseconds."""

    count: int
    p50: float
    p99: float
    max: float

    def summary(self) -> dict[str, float | None]:
        """JSON-ready (no NaN: an empty set has no percentiles)."""
        return {
            "count": self.count,
            **{
                k: None if v != v else round(v, 3)
                for k, v in (("p50", self.p50), ("p99", self.p99), ("max", self.max))
            },
        }

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency:
        if not seconds:
            return cls(0, float("nan"), float("nan"), float("nan"))
        values = np.asarray(seconds) * 1e3
        p50, p99 = np.percentile(values, [50, 99])
        return cls(len(values), float(p50), float(p99), float(values.max()))


@dataclass(frozen=True)
class Report:
    """The figures of one load over one window."""

    name: str
    seconds: float
    latencies: dict[int, list[float]]
    warmup: dict[int, list[float]]
    ok_in_window: int
    errors: dict[str, int]
    missing_retry_after: int
    retry_after: dict[float, int]
    unfinished: int
    dropped: int

    @classmethod
    def of(cls, name: str, recorder: Recorder) -> Report:
        return cls(
            name=name,
            seconds=recorder.stop - recorder.start,
            latencies=recorder.latencies,
            warmup=recorder.warmup,
            ok_in_window=recorder.ok_in_window,
            errors=dict(recorder.errors),
            missing_retry_after=recorder.missing_retry_after,
            retry_after=dict(recorder.retry_after),
            unfinished=recorder.unfinished,
            dropped=recorder.dropped,
        )

    @property
    def goodput(self) -> float:
        """Accepted (200) responses per second."""
        return self.ok_in_window / self.seconds if self.seconds > 0 else 0.0

    @property
    def counts(self) -> dict[int, int]:
        return {status: len(values) for status, values in sorted(self.latencies.items())}

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def connection_errors(self) -> int:
        return sum(self.errors.values())

    @property
    def unexpected(self) -> dict[int, int]:
        """Counts of statuses other than 200/429/503."""
        return {status: n for status, n in self.counts.items() if status not in EXPECTED}

    def latency(self, statuses: frozenset[int] | set[int] | None = None) -> Latency:
        """Latency over the given statuses (all when None)."""
        chosen = (
            self.latencies
            if statuses is None
            else {s: v for s, v in self.latencies.items() if s in statuses}
        )
        return Latency.of([x for values in chosen.values() for x in values])

    def problems(self) -> list[str]:
        """Anything the overload contract says should not happen, one phrase each."""
        out = []
        if self.unexpected:
            out.append(f"unexpected statuses {fmt_counts(self.unexpected)}")
        if self.connection_errors:
            out.append(f"connection errors {self.errors}")
        if self.missing_retry_after:
            out.append(f"{self.missing_retry_after} 429/503 without Retry-After")
        if self.unfinished:
            out.append(f"{self.unfinished} unfinished after the grace period")
        if self.dropped:
            out.append(f"{self.dropped} arrivals dropped by the generator")
        return out

    def warmup_latency(self, statuses: frozenset[int] | set[int]) -> Latency:
        """Latency of the warm-up's requests (the cold start) over the given statuses."""
        return Latency.of([x for s, v in self.warmup.items() if s in statuses for x in v])

    @property
    def accepted(self) -> Latency:
        return self.latency({200})

    @property
    def rejected(self) -> Latency:
        return self.latency(REJECTIONS)

    def summary(self) -> dict[str, Any]:
        """Everything but the raw latencies, JSON-ready."""
        return {
            "name": self.name,
            "seconds": round(self.seconds, 3),
            "goodput_per_s": round(self.goodput, 2),
            "counts": {str(k): v for k, v in self.counts.items()},
            "accepted_ms": self.accepted.summary(),
            "rejected_ms": self.rejected.summary(),
            "warmup_counts": {str(k): len(v) for k, v in sorted(self.warmup.items())},
            "warmup_accepted_ms": self.warmup_latency({200}).summary(),
            "warmup_rejected_ms": self.warmup_latency(REJECTIONS).summary(),
            "connection_errors": self.errors,
            "missing_retry_after": self.missing_retry_after,
            "retry_after_s": {str(k): v for k, v in self.retry_after.items()},
            "unfinished": self.unfinished,
            "dropped": self.dropped,
        }


# --------------------------------------------------------------------------------------------
# Loads


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


@dataclass(frozen=True)
class Run:
    """Reports of loads run together, the prober's, and the generator's own CPU use."""

    loads: dict[str, Report]
    liveness: Report
    seconds: float
    client_cpu_s: float

    @property
    def client_cpu_share(self) -> float:
        """The generator process's CPU time over wall time (1.0 = one core busy)."""
        return self.client_cpu_s / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        return {
            "seconds": round(self.seconds, 3),
            "client_cpu_share": round(self.client_cpu_share, 3),
            "loads": {name: report.summary() for name, report in self.loads.items()},
            "liveness": self.liveness.summary() | {"latency_ms": self.liveness.latency().summary()},
        }


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


# --------------------------------------------------------------------------------------------
# The server under test (for the benchmarks that start one)


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the benchmarks that start their own ``surety serve``."""
    parser.add_argument("--model-repository", type=Path, default=Path("model_repository"))
    parser.add_argument(
        "--timeout-ms", type=int, help="deadline sent in every request (default: the server's)"
    )
    parser.add_argument(
        "--surety",
        type=Path,
        help="the surety executable to serve with (default: the virtualenv's)",
    )
    parser.add_argument("--json", type=Path, help="also write all figures here")


def require_models(repository: Path, models: Sequence[str]) -> None:
    """Exit with a hint unless every model is built in the repository."""
    for model in models:
        if not (repository / model / "config.yaml").is_file():
            raise SystemExit(
                f"{repository / model} is missing: build it with `surety build-defaults`"
            )


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass(frozen=True)
class Server:
    """A running ``surety serve`` process."""

    endpoint: Endpoint
    pid: int


def default_surety() -> Path:
    """The ``surety`` console script of the running virtualenv."""
    return Path(sys.executable).with_name("surety")


@contextlib.contextmanager
def surety_server(
    repository: Path,
    *,
    executable: Path | None = None,
    env: Mapping[str, str] | None = None,
    ready_timeout: float = 180.0,
) -> Iterator[Server]:
    """``surety serve`` on a free port as a subprocess; yields once /v2/health/ready is 200.

    ``executable`` replaces the virtualenv's ``surety`` (e.g. another build, to compare two).
    """
    port = free_port()
    command = [
        str(executable or default_surety()),
        "serve",
        "--model-repository",
        str(repository),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    process = subprocess.Popen(command, env={**os.environ, **(env or {})})
    endpoint = Endpoint("127.0.0.1", port)
    try:
        deadline = time.monotonic() + ready_timeout
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint.url}/v2/health/ready", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the server did not become ready") from None
                time.sleep(0.2)
        yield Server(endpoint, process.pid)
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def inflight(endpoint: Endpoint) -> float | None:
    """Requests in flight in the server, summed over models, from /metrics (None if unknown)."""
    try:
        with urllib.request.urlopen(f"{endpoint.url}/metrics", timeout=10) as response:
            text = response.read().decode()
    except OSError:
        return None
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("surety_inflight_requests{")
    ]
    return sum(values) if values else None


def settle(endpoint: Endpoint, timeout: float = 120.0, quiet: float = 1.0) -> None:
    """Wait until the server has no request in flight, so one phase does not bleed into the next.

    Requests a hostile phase queued keep the server busy after its clients have gone.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        count = inflight(endpoint)
        if count is None or count == 0:
            break
        time.sleep(0.5)
    time.sleep(quiet)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


# --------------------------------------------------------------------------------------------
# Printing


def fmt_ms(value: float) -> str:
    return "-" if value != value else (f"{value:.1f}" if value < 100 else f"{value:.0f}")


def fmt_counts(counts: Mapping[int, int]) -> str:
    """``200:1234 429:56``, statuses outside 200/429/503 marked with ``!``."""
    return " ".join(
        f"{'!' if status not in EXPECTED else ''}{status}:{n}" for status, n in counts.items()
    )


def print_run(run: Run, title: str = "") -> None:
    """A compact table of one run."""
    if title:
        print(f"\n== {title} ==")
    print(
        f"{'load':<28}{'200/s':>8}{'200 p50':>9}{'200 p99':>9}{'rej p99':>9}{'rej max':>9}"
        f"  counts (errors)"
    )
    for report in run.loads.values():
        accepted, rejected = report.accepted, report.rejected
        extra = [p for p in report.problems() if not p.startswith("unexpected")]
        print(
            f"{report.name:<28}{report.goodput:8.1f}{fmt_ms(accepted.p50):>9}"
            f"{fmt_ms(accepted.p99):>9}{fmt_ms(rejected.p99):>9}{fmt_ms(rejected.max):>9}"
            f"  {fmt_counts(report.counts)} {' '.join(extra)}"
        )
    for report in run.loads.values():
        cold_ok, cold_rejected = report.warmup_latency({200}), report.warmup_latency(REJECTIONS)
        print(
            f"  {report.name} warm-up (cold start, not in the figures above): "
            f"200 max {fmt_ms(cold_ok.max)} ms, 429/503 max {fmt_ms(cold_rejected.max)} ms "
            f"({fmt_counts({s: len(v) for s, v in sorted(report.warmup.items())})})"
        )
    live = run.liveness.latency()
    problems = ""
    if run.liveness.connection_errors or run.liveness.unfinished:
        problems = f", conn errors {run.liveness.errors}, unfinished {run.liveness.unfinished}"
    print(
        f"liveness: p50 {fmt_ms(live.p50)} p99 {fmt_ms(live.p99)} max {fmt_ms(live.max)} ms "
        f"({fmt_counts(run.liveness.counts)}{problems}); "
        f"client CPU {run.client_cpu_share:.0%} of a core"
    )


# --------------------------------------------------------------------------------------------
# CLI


def main(argv: Sequence[str] | None = None) -> None:
    """Offer one load to a running server and print (or write) the figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=DIGITS, choices=[DIGITS, FORTUNE_TOPICS])
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds first")
    parser.add_argument("--clients", type=int, default=16, help="closed loop: clients")
    parser.add_argument(
        "--ignore-retry-after",
        action="store_true",
        help="closed loop: resend at once after 429/503 (hostile)",
    )
    parser.add_argument("--rate", type=float, help="open loop: arrivals per second")
    parser.add_argument("--connections", type=int, default=256, help="open loop: connections")
    parser.add_argument("--arrivals", choices=["poisson", "fixed"], default="poisson")
    parser.add_argument("--timeout-ms", type=int, help="deadline sent as parameters.timeout_ms")
    parser.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="seconds in-flight requests may take after the window",
    )
    parser.add_argument("--json", type=Path, help="also write the summary here")
    args = parser.parse_args(argv)

    endpoint = Endpoint.parse(args.url)
    requests = model_requests(endpoint, args.model, timeout_ms=args.timeout_ms)
    load: Load
    if args.rate is not None:
        load = OpenLoop(
            f"{args.model} open {args.rate:g}/s",
            requests,
            args.rate,
            args.connections,
            args.arrivals,
        )
    else:
        mode = " ignore-RA" if args.ignore_retry_after else ""
        load = ClosedLoop(
            f"{args.model} x{args.clients}{mode}", requests, args.clients, args.ignore_retry_after
        )
    result = run(endpoint, [load], duration=args.duration, warmup=args.warmup, grace=args.grace)
    print_run(result, f"{args.url}, {args.duration:g} s")
    if args.json is not None:
        args.json.write_text(json.dumps(result.summary(), indent=2) + "\n")


if __name__ == "__main__":
    main()
