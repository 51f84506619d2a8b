"""Typed settings, read from the environment with the ``SURETY_`` prefix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, PositiveInt, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogLevel = Literal["critical", "error", "warning", "info", "debug"]


def available_cores() -> int:
    """CPU cores this process may run on (respects affinity masks and container cpusets)."""
    return len(os.sched_getaffinity(0))


class Settings(BaseSettings):
    """Server settings; every field can be set as ``SURETY_<FIELD>`` (e.g. ``SURETY_PORT``)."""

    model_config = SettingsConfigDict(
        env_prefix="SURETY_", env_ignore_empty=True, extra="ignore", protected_namespaces=()
    )

    model_repository: Path = Path("model_repository")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    log_level: LogLevel = "info"
    access_log: bool = Field(
        default=False, description="uvicorn's per-request log line; metrics cover the same ground"
    )

    batching: bool = Field(
        default=True,
        description="dynamic batching as configured per model; false runs every request alone",
    )
    max_request_bytes: PositiveInt = Field(
        default=8 * 1024 * 1024, description="larger request bodies are refused with 413"
    )
    retry_after_s: PositiveInt = Field(
        default=1, description="the Retry-After value sent with 429 and 503"
    )
    pace_early_retries: bool = Field(
        default=False,
        description="hold the refusal of a connection that returns before its Retry-After "
        "until it passes; for servers facing clients directly, not behind pooling proxies",
    )
    strict_readiness: bool = Field(
        default=True,
        description="server ready only when every model in the repository loaded (as Triton)",
    )

    intra_op_threads: PositiveInt = Field(
        default=1, description="ORT threads per run; batches give more than intra-op splits"
    )
    inference_workers: PositiveInt | None = Field(
        default=None,
        description="concurrent ORT runs in each process; "
        "default cores // (processes * intra_op_threads)",
    )
    # ``workers`` is taken by the method below (inference workers), hence the field's name;
    # the variable is SURETY_WORKERS, as the command line's --workers.
    processes: PositiveInt = Field(
        default=1,
        validation_alias=AliasChoices("processes", "surety_workers"),
        description="server processes sharing the port (SURETY_WORKERS, --workers), each "
        "loading every model; metrics are aggregated across them",
    )

    # -- bounded work per request ---------------------------------------------------------
    max_request_elements: PositiveInt = Field(
        default=1 << 22,
        description="tensor elements (numbers or strings) across a request's inputs; more is a 400",
    )
    max_request_tensors: PositiveInt = Field(
        default=64, description="entries in a request's inputs (and in its outputs); more is a 400"
    )

    # -- deadlines --------------------------------------------------------------------------
    max_timeout_ms: PositiveInt = Field(
        default=60_000,
        description="the longest deadline a request may ask for (timeout_ms, Request-Timeout)",
    )

    # -- connections ------------------------------------------------------------------------
    header_timeout_s: float = Field(
        default=10.0, gt=0, description="a request head must arrive within this; else closed"
    )
    body_timeout_s: float = Field(
        default=30.0, gt=0, description="a request body must arrive within this; else 408"
    )
    max_buffered_bytes: PositiveInt = Field(
        default=64 * 1024 * 1024,
        description="request bytes buffered at once across all uploads; beyond it 503",
    )

    # -- drain ------------------------------------------------------------------------------
    drain_s: float = Field(
        default=5.0,
        ge=0,
        description="after SIGTERM: readiness 503 while serving on, so load balancers move away",
    )
    shutdown_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="after SIGTERM: the hard bound; unfinished requests then get 503, exit 0",
    )

    def workers(self) -> int:
        """The number of threads that run ORT sessions in each server process: the available
        cores shared out between the processes, ``intra_op_threads`` each."""
        if self.inference_workers is not None:
            return self.inference_workers
        return max(1, available_cores() // (self.processes * self.intra_op_threads))

    # -- API keys ---------------------------------------------------------------------------
    # NoDecode: the variable is a plain comma-separated list, not the JSON pydantic-settings
    # expects of list fields. SecretStr keeps the keys out of reprs and logs.
    api_keys: Annotated[tuple[SecretStr, ...], NoDecode] = Field(
        default=(),
        description="comma-separated keys; with these or api_keys_file set, requests need a key",
    )
    api_keys_file: Path | None = Field(
        default=None,
        description="a file of SHA-256 hex digests of keys, one per line, '#' starts a comment",
    )
    metrics_require_key: bool = Field(
        default=False, description="/metrics needs a key too (scrapers often have none)"
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(key.strip() for key in value.split(",") if key.strip())
        return value
