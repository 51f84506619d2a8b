"""Typed settings, read from the environment with the ``SURETY_`` prefix."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, PositiveInt
from pydantic_settings import BaseSettings, SettingsConfigDict

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
    strict_readiness: bool = Field(
        default=True,
        description="server ready only when every model in the repository loaded (as Triton)",
    )

    intra_op_threads: PositiveInt = Field(
        default=1, description="ORT threads per run; batches give more than intra-op splits"
    )
    inference_workers: PositiveInt | None = Field(
        default=None,
        description="concurrent ORT runs in the process; default cores // intra_op_threads",
    )

    def workers(self) -> int:
        """The number of threads that run ORT sessions, bounded by the available cores."""
        if self.inference_workers is not None:
            return self.inference_workers
        return max(1, available_cores() // self.intra_op_threads)
