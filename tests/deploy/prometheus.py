"""A real Prometheus for the deployment tests: the tools, a scrape config aimed at test targets,
a server process on a free port, and its HTTP API.

    config = scrape_config(["127.0.0.1:8123"])        # deploy/prometheus/prometheus.yml, retargeted
    with running_prometheus(config, tmp_path) as prometheus:
        prometheus.wait_for_targets()
        prometheus.query("surety:requests:rate1m")    # the instant vector's samples

The binaries come from Debian's `prometheus` package (2.42 on Debian 12), installed by
scripts/deploy_tools.sh when missing: `require_tools` runs it once per session and skips the
calling test when the tools cannot be had, except under CI (CI=true), where that is a failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from surety_kit.server import NotReadyError, free_port, stop_process, wait_ready

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
#: The compose stack's scrape config and recording rules.
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES = PROMETHEUS_DIR / "rules.yml"
DEPLOY_TOOLS = ROOT / "scripts" / "deploy_tools.sh"


class ToolsUnavailableError(RuntimeError):
    """A tool is missing and scripts/deploy_tools.sh could not install it."""


class PrometheusError(RuntimeError):
    """The Prometheus API answered an error (a bad query names its fault here)."""


#: The outcome of the one deploy_tools.sh run of this process: None before it ran, else its
#: error ("" on success). apt-get takes seconds even when it fails; once is enough.
_install_error: str | None = None


def ensure_tools(*tools: str) -> dict[str, str]:
    """The paths of ``tools``, installing them with scripts/deploy_tools.sh when any is
    missing (once per process)."""
    global _install_error
    if any(shutil.which(tool) is None for tool in tools) and _install_error is None:
        result = subprocess.run(
            ["bash", str(DEPLOY_TOOLS)], capture_output=True, text=True, timeout=900, check=False
        )
        _install_error = "" if result.returncode == 0 else (result.stdout + result.stderr)[-2000:]
    paths = {tool: shutil.which(tool) for tool in tools}
    missing = [tool for tool, path in paths.items() if path is None]
    if missing:
        raise ToolsUnavailableError(
            f"{', '.join(missing)} not found and scripts/deploy_tools.sh could not install "
            f"them: {_install_error or 'no error reported'}"
        )
    return {tool: path for tool, path in paths.items() if path is not None}


def in_ci() -> bool:
    """Whether this runs under CI (CI=true), where a check that cannot run must fail."""
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def require_tools(*tools: str) -> dict[str, str]:
    """``ensure_tools`` for a test: skip it, loudly, when the tools cannot be installed here
    (no apt, no network); under CI (CI=true) fail instead, so a runner that lost its tools
    cannot pass by skipping the checks."""
    try:
        return ensure_tools(*tools)
    except ToolsUnavailableError as exc:
        if in_ci():
            pytest.fail(f"CI=true and the deployment tools are unavailable: {exc}")
        pytest.skip(f"DEPLOYMENT CHECKS NOT RUN: {exc}")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS`` (e.g. "check", "rules", FILE), output captured, never raising."""
    (path,) = ensure_tools("promtool").values()
    return subprocess.run(
        [path, *args], capture_output=True, text=True, timeout=120, check=False, cwd=ROOT
    )


def scrape_config(
    targets: Sequence[str],
    *,
    job: str = "surety",
    source: Path = PROMETHEUS_CONFIG,
    interval_s: float = 1.0,
    rule_files: Sequence[Path] = (RULES,),
) -> dict[str, Any]:
    """``source`` with ``job`` scraping ``targets`` instead, the other jobs dropped (their
    compose host names mean nothing here), scrape and rule evaluation every ``interval_s``
    and the rule files as absolute paths (the config is written elsewhere)."""
    config: dict[str, Any] = yaml.safe_load(source.read_text())
    jobs = [scrape for scrape in config["scrape_configs"] if scrape["job_name"] == job]
    if not jobs:
        raise ValueError(f"{source} has no scrape job {job!r}")
    (scrape,) = jobs
    scrape["static_configs"] = [{"targets": list(targets)}]
    # Per-job settings would override the global ones set below.
    for key in ("scrape_interval", "scrape_timeout"):
        scrape.pop(key, None)
    interval = f"{int(interval_s * 1000)}ms"
    config["global"] = {
        **config.get("global", {}),
        "scrape_interval": interval,
        "scrape_timeout": interval,
        "evaluation_interval": interval,
    }
    config["scrape_configs"] = [scrape]
    config["rule_files"] = [str(path.resolve()) for path in rule_files]
    return config


@dataclass
class Prometheus:
    """A Prometheus process started by ``running_prometheus`` and its HTTP API."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        response = httpx.get(f"{self.url}{path}", params=params, timeout=10)
        try:
            body = response.json()
        except ValueError:
            response.raise_for_status()
            raise
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {dict(params or {})}: {body.get('error', body)}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The samples of ``expr`` evaluated now: ``[{"metric": {...}, "value": [t, "v"]}]``
        for a vector, empty when nothing matches. Raises PrometheusError for a bad query."""
        data = self._get("/api/v1/query", {"query": expr})
        if data["resultType"] in {"scalar", "string"}:
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def label_values(self, label: str, match: str | None = None) -> list[str]:
        """The values ``label`` takes (on series matching ``match``), as Grafana's
        ``label_values(match, label)`` variable queries ask for them."""
        params = {"match[]": match} if match else None
        return list(self._get(f"/api/v1/label/{label}/values", params))

    def targets(self) -> list[dict[str, Any]]:
        """The active scrape targets, each with its ``health`` and ``lastError``."""
        return list(self._get("/api/v1/targets", {"state": "active"})["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule, each with its ``name``, ``health`` and ``lastError``."""
        groups = self._get("/api/v1/rules")["groups"]
        return [rule for group in groups for rule in group["rules"]]

    def wait_for_targets(self, timeout_s: float = 30) -> None:
        """Until every target was scraped successfully at least once."""
        deadline = time.monotonic() + timeout_s
        while True:
            targets = self.targets()
            if targets and all(target["health"] == "up" for target in targets):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"targets not up within {timeout_s} s: {targets}")
            time.sleep(0.2)

    def alive(self) -> bool:
        return self.process.poll() is None


def _start(config_file: Path, storage: Path, log: Path, port: int) -> subprocess.Popen[bytes]:
    (binary,) = ensure_tools("prometheus").values()
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                binary,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={storage}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


@contextmanager
def running_prometheus(
    config: Mapping[str, Any], workdir: Path, timeout_s: float = 30
) -> Iterator[Prometheus]:
    """Run Prometheus with ``config`` (see ``scrape_config``) on a free port of 127.0.0.1,
    its config, data and log under ``workdir``; stopped (SIGTERM, then SIGKILL) on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(dict(config), sort_keys=False))
    log = workdir / "prometheus.log"
    # The port is free when chosen but may be taken before Prometheus binds it: retry then.
    for _attempt in range(3):
        port = free_port()
        process = _start(config_file, workdir / "data", log, port)
        prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log)
        try:
            wait_ready(prometheus.url, process, path="/-/ready", timeout=timeout_s, log=log)
            break
        except NotReadyError:
            if process.poll() is None:  # not the port: too slow
                stop_process(process)
                raise
        except BaseException:
            stop_process(process)
            raise
        if "address already in use" not in log.read_text(errors="replace"):
            raise RuntimeError(f"prometheus did not start:\n{log.read_text(errors='replace')}")
    else:
        raise RuntimeError(f"prometheus found no free port:\n{log.read_text(errors='replace')}")
    try:
        yield prometheus
    finally:
        stop_process(process)
