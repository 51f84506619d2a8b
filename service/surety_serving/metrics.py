"""Every Prometheus object of the service, created once per app on its own registry.

A registry per app (not the global default) lets several apps live in one process, as in tests.
Labels are bounded: endpoint names, model names from the repository, status codes, reasons.

With several server processes (``surety serve --workers N``) the parent sets
``PROMETHEUS_MULTIPROC_DIR`` before the workers start: every value then lives in a file of that
directory, and each worker's ``/metrics`` reads them all (`multiprocess_dir`).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

#: The variable prometheus-client reads (at import) for its multiprocess mode.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The directory of the multiprocess mode's files, or None with one process."""
    return os.environ.get(MULTIPROC_ENV) or None


#: Seconds, from 0.5 ms: small CPU models answer in a few milliseconds. `latency_buckets`
#: extends them past the longest deadline a request may have.
LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
#: Judges score on small integer scales (1–5 most often, 1–9, 1–10): quarter points up to 5,
#: halves up to 10.
JUDGE_SCORE_BUCKETS = (
    *(0.25 * i for i in range(0, 21)),
    *(5.0 + 0.5 * i for i in range(1, 11)),
)
#: The ensemble score is standardised on in-distribution calibration data: about N(0, 1) there,
#: and far below 0 out of distribution (its scale is that of squared distances).
MAHALANOBIS_BUCKETS = (
    -1000.0,
    -100.0,
    -30.0,
    -10.0,
    -5.0,
    -3.0,
    -2.0,
    -1.0,
    -0.5,
    0.0,
    0.5,
    1.0,
    2.0,
)


def latency_buckets(longest_s: float) -> tuple[float, ...]:
    """LATENCY_BUCKETS, doubled onwards until one bucket lies past ``longest_s``: a request
    that runs to its deadline is still told apart from one that ran longer."""
    buckets = list(LATENCY_BUCKETS)
    while buckets[-1] <= longest_s:
        buckets.append(buckets[-1] * 2)
    return tuple(buckets)


@dataclass(frozen=True)
class BatchMetrics:
    """The per-model children that a batcher records into."""

    queue_duration: Histogram
    inference_duration: Histogram
    batch_size: Histogram


class Metrics:
    """The service's metrics on a private registry."""

    def __init__(self, longest_request_s: float = LATENCY_BUCKETS[-1]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        latency = latency_buckets(longest_request_s)
        self.requests = Counter(
            "surety_requests", "HTTP requests answered.", ["endpoint", "model", "code"], registry=r
        )
        self.request_duration = Histogram(
            "surety_request_duration_seconds",
            "Time from request start to the response's last byte.",
            ["endpoint", "model"],
            buckets=latency,
            registry=r,
        )
        self.queue_duration = Histogram(
            "surety_queue_duration_seconds",
            "Time a request waited in its model's batching queue.",
            ["model"],
            buckets=latency,
            registry=r,
        )
        self.inference_duration = Histogram(
            "surety_inference_duration_seconds",
            "Time of one ONNX Runtime run (one batch).",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "surety_batch_size",
            "Rows in each ONNX Runtime run.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        # multiprocess_mode only counts with several processes: in-flight requests add up
        # across the live workers; a model is ready when it is loaded in every live worker.
        self.inflight = Gauge(
            "surety_inflight_requests",
            "Requests being served.",
            ["model"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.rejected = Counter(
            "surety_rejected_requests", "Requests shed.", ["model", "reason"], registry=r
        )
        self.model_ready = Gauge(
            "surety_model_ready", "1 when the model version is loaded.", ["model", "version"],
            registry=r, multiprocess_mode="livemin",
        )  # fmt: skip
        self.ood = Counter(
            "surety_ood", "Requests flagged out of distribution.", ["model"], registry=r
        )
        self.mahalanobis_score = Histogram(
            "surety_mahalanobis_score",
            "The served OOD detector's standardised score of each request "
            "(higher = more in-distribution).",
            ["model"],
            buckets=MAHALANOBIS_BUCKETS,
            registry=r,
        )
        self.sdm_reliable = Counter(
            "surety_sdm_reliable",
            "Requests inside SDM's high-reliability region.",
            ["model"],
            registry=r,
        )
        self.judge_score = Histogram(
            "surety_judge_score",
            "The expected score an LLM judge gave each judged row.",
            ["model"],
            buckets=JUDGE_SCORE_BUCKETS,
            registry=r,
        )
        # The uncertainty stage is batched like inference (requests of one ORT batch are
        # evaluated together), with its own series so the model's figures stay ORT's.
        self.uncertainty_queue_duration = Histogram(
            "surety_uncertainty_queue_duration_seconds",
            "Time a request waited for its batched uncertainty evaluation.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.uncertainty_duration = Histogram(
            "surety_uncertainty_duration_seconds",
            "Time of one batched Mahalanobis + SDM evaluation.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.uncertainty_batch_size = Histogram(
            "surety_uncertainty_batch_size",
            "Rows in each batched uncertainty evaluation.",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self._multiprocess_dir = multiprocess_dir()
        if self._multiprocess_dir is None:
            ProcessCollector(registry=r)

    def for_uncertainty_batcher(self, model: str) -> BatchMetrics:
        """The labelled children a model's uncertainty batcher records into."""
        return BatchMetrics(
            self.uncertainty_queue_duration.labels(model=model),
            self.uncertainty_duration.labels(model=model),
            self.uncertainty_batch_size.labels(model=model),
        )

    def for_batcher(self, model: str) -> BatchMetrics:
        """The labelled children a model's batcher records into."""
        return BatchMetrics(
            self.queue_duration.labels(model=model),
            self.inference_duration.labels(model=model),
            self.batch_size.labels(model=model),
        )

    def exposition(self) -> bytes:
        """The Prometheus text format of everything on the registry (of every worker's, with
        several processes)."""
        if self._multiprocess_dir is None:
            return generate_latest(self.registry)
        # A fresh registry per scrape, as prometheus-client prescribes: the collector reads the
        # files of every process, live and dead (counters and histograms keep what dead ones
        # counted; live* gauges drop them).
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self._multiprocess_dir)  # type: ignore[no-untyped-call]
        registry.register(GroupCpuCollector())
        return generate_latest(registry)


class GroupCpuCollector(Collector):
    """``process_cpu_seconds_total`` of the whole server (the parent and its workers), which
    prometheus-client's multiprocess mode would otherwise drop with the process collector."""

    def collect(self) -> Iterator[Metric]:
        total = sum(cpu_seconds(pid) for pid in group_pids())
        yield CounterMetricFamily(
            "process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", total
        )


def group_pids() -> list[int]:
    """This worker's parent and the parent's children (every worker), from /proc."""
    parent = os.getppid()
    try:
        children = Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    except OSError:
        return [os.getpid()]
    return [parent, *(int(pid) for pid in children)]


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process (0 when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # Fields after the command (which may hold spaces), from the 3rd: utime is the 14th.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
