"""The monitoring of the deployment, checked with the real tools: promtool on the scrape config
and recording rules, docker-compose on docker-compose.yml, the Grafana dashboard's structure,
and, end to end, a real Prometheus scraping a real `surety serve` under a short load, where
every dashboard query and every recording rule must return data.

Grafana itself is not run (no package or image can be had here): its queries are PromQL, and
are asked of Prometheus exactly as Grafana would, template variables substituted.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from surety_kit.server import serve
from surety_serving.metrics import Metrics
from tests.deploy.prometheus import (
    DEPLOY_TOOLS,
    PROMETHEUS_CONFIG,
    ROOT,
    RULES,
    Prometheus,
    promtool,
    require_tools,
    running_prometheus,
    scrape_config,
)
from tests.tiers import model_fixture

pytestmark = pytest.mark.network

COMPOSE_FILE = ROOT / "docker-compose.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "surety.json"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDERS = GRAFANA / "provisioning" / "dashboards" / "surety.yml"
DEFAULT_REPOSITORY = ROOT / "model_repository"
RULES_TEST = RULES.with_name("rules_test.yml")

#: What Grafana's built-in interval variables become in the test's queries: a window that
#: holds the whole load at the test's 1 s scrape interval.
BUILTIN_VARIABLES = {"__rate_interval": "1m", "__interval": "1m", "__range": "1m"}
#: How long the end-to-end test waits for every query to return data after the load.
DATA_TIMEOUT_S = 30.0


# -- the files, checked by their own tools ----------------------------------------------------


def test_deploy_tools_script_is_idempotent():
    """With the tools present, the script finds them and installs nothing, quickly."""
    require_tools("prometheus", "promtool", "docker-compose")
    started = time.monotonic()
    result = subprocess.run(
        ["bash", str(DEPLOY_TOOLS)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "installing" not in result.stdout + result.stderr
    assert time.monotonic() - started < 5


def test_promtool_accepts_the_scrape_config_and_rules():
    require_tools("promtool")
    # check config also loads the rule files it names (rules.yml, next to it).
    config = promtool("check", "config", str(PROMETHEUS_CONFIG))
    assert config.returncode == 0, config.stdout + config.stderr
    assert "SUCCESS" in config.stdout
    rules = promtool("check", "rules", str(RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"SUCCESS: {len(recording_rules())} rules found" in rules.stdout


def test_recording_rules_compute_what_they_claim():
    """promtool's unit tests of the rules (deploy/prometheus/rules_test.yml): synthetic series
    of known rates, exact expected values, one case per rule at least."""
    require_tools("promtool")
    cases = yaml.safe_load(RULES_TEST.read_text())["tests"]
    tested = {case["expr"] for test in cases for case in test["promql_expr_test"]}
    assert set(recording_rules()) <= tested, sorted(set(recording_rules()) - tested)
    result = promtool("test", "rules", str(RULES_TEST))
    assert result.returncode == 0, result.stdout + result.stderr


def test_scrape_config_targets_the_compose_service():
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    (surety,) = [job for job in config["scrape_configs"] if job["job_name"] == "surety"]
    assert surety["static_configs"] == [{"targets": ["surety:8000"]}]
    assert surety.get("metrics_path", "/metrics") == "/metrics"
    assert config["rule_files"] == [RULES.name]


def test_recording_rules_use_only_metrics_the_server_exports():
    """Every metric a rule reads is one service/surety_serving/metrics.py registers (a renamed
    metric would
    otherwise leave a rule, and its panel, silently empty)."""
    exported = exported_series_names()
    for name, expr in recording_rules().items():
        assert name.startswith("surety:"), name
        used = set(re.findall(r"\bsurety_[a-z_]+\b", expr))
        assert used, f"{name} reads no surety metric"
        assert used <= exported, f"{name} reads unknown series {sorted(used - exported)}"


def test_compose_file_validates_with_docker_compose():
    (compose,) = require_tools("docker-compose").values()
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    check = subprocess.run(
        [compose, "-f", str(COMPOSE_FILE), "config", "-q"],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT, env=env,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr
    assert check.stderr == "", check.stderr  # no warning either (e.g. ignored deploy keys)
    # The resolved file, as compose will run it.
    resolved = subprocess.run(
        [compose, "-f", str(COMPOSE_FILE), "config"],
        capture_output=True, text=True, timeout=60, check=True, cwd=ROOT, env=env,
    )  # fmt: skip
    services = yaml.safe_load(resolved.stdout)["services"]
    assert set(services) == {"surety", "prometheus", "grafana"}

    surety = services["surety"]
    assert surety["build"]["context"] == str(ROOT)
    assert surety["image"] == "surety:latest"
    assert {"published": 8000, "target": 8000} in surety["ports"]
    assert "/v2/health/ready" in " ".join(surety["healthcheck"]["test"])
    assert surety["deploy"]["resources"]["limits"]["memory"]
    repository = surety["environment"]["SURETY_MODEL_REPOSITORY"]
    assert any(volume.split(":")[1] == repository for volume in surety["volumes"])
    # The scrape target is this service's name and port.
    assert surety["environment"]["SURETY_PORT"] == "8000"

    prometheus = services["prometheus"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in prometheus["volumes"] if ":" in v}
    assert mounts[str(PROMETHEUS_CONFIG.parent)] == "/etc/prometheus"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    assert {"published": 9090, "target": 9090} in prometheus["ports"]

    grafana = services["grafana"]
    mounts = {v.split(":")[0]: v.split(":")[1] for v in grafana["volumes"] if ":" in v}
    assert mounts[str(GRAFANA / "provisioning")] == "/etc/grafana/provisioning"
    providers = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert mounts[str(DASHBOARD.parent)] == providers[0]["options"]["path"]
    assert "prometheus" in grafana["depends_on"]
    assert {"published": 3000, "target": 3000} in grafana["ports"]


def test_dashboard_is_a_grafana_dashboard_of_promql_panels():
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "surety"
    assert 36 <= dashboard["schemaVersion"] <= 41
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    panels = data_panels(dashboard)
    assert len(panels) >= 7
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    recorded = set(recording_rules())
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no targets"
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), f"panel {panel['title']!r} has an empty expr"
            assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
            # A panel reading a rule that does not exist would show "No data" forever.
            for rule in re.findall(r"\bsurety:[a-z0-9_:]+", target["expr"]):
                assert rule in recorded, f"panel {panel['title']!r} reads unknown rule {rule}"
    titles = {panel["title"] for panel in panels}
    for wanted in (
        "Request rate",
        "Latency p50 / p99",
        "Batch size (rows per run)",
        "Queue depth",
        "OOD share",
        "SDM admitted share",
        "Errors by code",
    ):
        assert wanted in titles


# -- end to end: a real server, a real Prometheus, real requests ------------------------------


@pytest.mark.slow
def test_every_dashboard_query_and_recording_rule_returns_data(served_repository, tmp_path):
    repository, digits, text_model = served_repository
    with surety_server(repository, tmp_path) as server:
        assert_dashboard_has_data(server, repository, digits, text_model, tmp_path)


def assert_dashboard_has_data(
    server: str, repository: Path, digits: str, text_model: str, workdir: Path
) -> None:
    """A real Prometheus with the compose stack's scrape config (its target rewritten to
    ``server``) and recording rules scrapes ``server`` (a process or the container) under a
    short load: every dashboard expression and every recording rule returns data."""
    require_tools("prometheus")
    with running_prometheus(
        scrape_config([server.removeprefix("http://")], interval_s=1.0), workdir / "prom"
    ) as prometheus:
        prometheus.wait_for_targets()
        started = time.monotonic()
        send_load(server, repository, digits, text_model)
        load_s = time.monotonic() - started
        queries = dashboard_queries(json.loads(DASHBOARD.read_text()))
        rules = recording_rules()
        empty = wait_for_data(prometheus, [*queries, *rules])
        assert not empty, (
            f"no data after {DATA_TIMEOUT_S:.0f} s for {len(empty)} queries: {empty}\n"
            f"targets: {prometheus.targets()}\nserver /metrics:\n"
            f"{httpx.get(f'{server}/metrics').text[:4000]}"
        )
        # Every rule was loaded and evaluates without error.
        loaded = {rule["name"]: rule for rule in prometheus.rules()}
        assert set(loaded) == set(rules)
        for name, rule in loaded.items():
            assert rule["health"] == "ok", f"{name}: {rule.get('lastError')}"
        # The dashboard's variable query lists the served models.
        variables = json.loads(DASHBOARD.read_text())["templating"]["list"]
        for variable in variables:
            match, label = parse_label_values(variable["definition"])
            assert {digits, text_model} <= set(prometheus.label_values(label, match))

        # The data is the load's, not just series that exist.
        def value(expr: str) -> dict[str, float]:
            """label=value,... (the series name left out) -> the sample's value."""
            return {
                ",".join(f"{k}={v}" for k, v in sorted(s["metric"].items()) if k != "__name__"): (
                    float(s["value"][1])
                )
                for s in prometheus.query(expr)
            }

        codes = value('sum by (code) (surety:requests:rate1m{code=~"[45].."})')
        assert {"code=400", "code=404", "code=504"} <= set(codes), codes
        assert value(f'surety:rejected_requests:rate1m{{model="{digits}",reason="deadline"}}')
        assert value(f'surety:batch_size:mean1m{{model="{digits}"}}')[f"model={digits}"] >= 1
        ood = value(f'surety:ood:share1m{{model="{digits}"}}')[f"model={digits}"]
        admitted = value(f'surety:sdm_reliable:share1m{{model="{digits}"}}')[f"model={digits}"]
        # About half of the digits /uncertainty rows were noise (flagged), half test images.
        assert 0.2 < ood < 0.9, ood
        assert 0.0 < admitted < 1.0, admitted
    print(
        f"load {load_s:.1f} s; {len(queries)} dashboard queries and {len(rules)} rules with "
        f"data; digits OOD share {ood:.2f}, SDM admitted {admitted:.2f}"
    )


def has_data(prometheus: Prometheus, expr: str) -> bool:
    """``expr`` returns a sample with a number: NaN (a quantile or share over an empty window)
    is what a panel shows as a gap, not data."""
    return any(math.isfinite(float(sample["value"][1])) for sample in prometheus.query(expr))


def wait_for_data(prometheus: Prometheus, queries: list[str]) -> list[str]:
    """The queries still without data after DATA_TIMEOUT_S (rates need two scrapes of a
    series, the rules one evaluation after that); [] as soon as all have data."""
    deadline = time.monotonic() + DATA_TIMEOUT_S
    while True:
        empty = [expr for expr in queries if not has_data(prometheus, expr)]
        if not empty or time.monotonic() > deadline:
            return empty
        time.sleep(0.5)


# -- the dashboard and the rules, read ---------------------------------------------------------


def recording_rules() -> dict[str, str]:
    """record name -> expr of deploy/prometheus/rules.yml."""
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {rule["record"]: rule["expr"] for group in groups for rule in group["rules"]}


def data_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels that show data (rows only group them), nested rows' panels included."""
    panels: list[dict[str, Any]] = []
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            panels.extend(panel.get("panels", []))
        else:
            panels.append(panel)
    return panels


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every target expr of the dashboard, its template variables substituted as Grafana does
    with each variable's default ("All": the variable's allValue)."""
    values = dict(BUILTIN_VARIABLES)
    for variable in dashboard.get("templating", {}).get("list", []):
        current = variable.get("current", {}).get("value")
        everything = current in ("$__all", ["$__all"])
        if everything or not current:
            assert variable.get("includeAll") and variable.get("allValue"), variable["name"]
            values[variable["name"]] = variable["allValue"]
        else:
            values[variable["name"]] = current if isinstance(current, str) else "|".join(current)
    queries = []
    for panel in data_panels(dashboard):
        for target in panel["targets"]:
            queries.append(substitute(target["expr"], values))
    return queries


VARIABLE = re.compile(r"\$\{(\w+)(?::[^}]*)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with $name, ${name}, ${name:format} and [[name]] replaced; an unknown variable
    is an error, not a query that silently matches nothing."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise KeyError(f"unknown dashboard variable {name!r} in {expr!r}")
        return values[name]

    return VARIABLE.sub(replace, expr)


def parse_label_values(definition: str) -> tuple[str | None, str]:
    """(match, label) of a Grafana ``label_values([match, ]label)`` variable query."""
    parsed = re.fullmatch(r"\s*label_values\(\s*(?:(.+?)\s*,\s*)?(\w+)\s*\)\s*", definition)
    assert parsed, f"unsupported variable query {definition!r}"
    return parsed.group(1), parsed.group(2)


def exported_series_names() -> set[str]:
    """The series names the server's registry exposes (a counter's _total, a histogram's
    _bucket/_sum/_count, ...), read from a real Metrics object."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


# -- the served repository, the server, the load -----------------------------------------------


def _complete_default_repository() -> bool:
    """./model_repository holds both default models, calibrated (what `make run` builds)."""
    return all(
        (DEFAULT_REPOSITORY / model / "1" / "uncertainty").is_dir()
        and (DEFAULT_REPOSITORY / model / "config.yaml").is_file()
        for model in ("digits", "fortune-topics")
    )


@model_fixture(scope="module")
def served_repository(tmp_path_factory) -> tuple[Path, str, str]:
    """(repository, image model, text model): the default repository when `make run` built
    it; otherwise (a fresh clone, as in CI: `make test` does not build it) the digits model
    and the tests' tiny text classifier, built here (about 40 s)."""
    if _complete_default_repository():
        return DEFAULT_REPOSITORY, "digits", "fortune-topics"
    print(
        "\n*** model_repository/ is not built: building digits and the tiny text model for "
        "the observability test (run `make run` once to use the default models) ***"
    )
    from surety_serving.models import digits
    from tests.service import textmodel

    work = tmp_path_factory.mktemp("observability_models")
    text = textmodel.build(work)
    repository = text.model_root.parent
    digits.build(repository / "digits", progress=False)
    return repository, "digits", text.model_root.name


@contextmanager
def surety_server(repository: Path, workdir: Path) -> Iterator[str]:
    """`surety serve` as its own process on a free port of 127.0.0.1 (what Prometheus
    scrapes in production is a process, not an app in the test's thread); its URL once ready."""
    # SIGINT skips the drain window that SIGTERM keeps open for load balancers
    # (SURETY_DRAIN_S, 5 s): nothing routes to this server but the test.
    with serve(
        repository, log=workdir / "surety.log", stop_signal=signal.SIGINT, stop_timeout=45
    ) as served:
        yield served.url


ROUNDS = 3
#: Seconds between the rounds' starts: more than the test's 1 s scrape interval.
ROUND_S = 1.1
CLIENTS = 6
TEXTS = [
    "The compiler crashed again after the kernel upgrade.",
    "Real programmers don't comment their code: if it was hard to write, it should be hard "
    "to understand.",
    "The Senate passed the bill after a long debate.",
    "Live long and prosper.",
]
#: Text nothing like fortunes: the OOD-ish rows of the text model.
ODD_TEXTS = ["zq xv 0x7f3a 9f ## %% qqq", "aaaaaaaa aaaaaaaa aaaaaaaa aaaaaaaa"]


def send_load(server: str, repository: Path, digits: str, text_model: str) -> None:
    """A short, mixed load over ROUNDS rounds about a second apart (so that every counter
    moves between scrapes, and rates are non-zero): concurrent digits requests (batches form),
    text requests, in- and out-of-distribution /uncertainty rows, and failing requests (400,
    404, 504 by a deadline already past)."""
    images = np.array(
        [
            json.loads(line)["image"]
            for line in (repository / digits / "data" / "test.jsonl").read_text().splitlines()[:64]
        ],
        dtype=np.float32,
    )
    rng = np.random.default_rng(0)
    noise = rng.uniform(0.0, 16.0, size=(16, 64)).astype(np.float32)

    def image_body(rows: np.ndarray) -> dict[str, Any]:
        return {"inputs": [{"name": "image", "shape": list(rows.shape), "datatype": "FP32",
                            "data": rows.ravel().tolist()}]}  # fmt: skip

    def text_body(texts: list[str]) -> dict[str, Any]:
        return {"inputs": [{"name": "text", "shape": [len(texts)], "datatype": "BYTES",
                            "data": texts}]}  # fmt: skip

    failures: list[str] = []

    def expect(response: httpx.Response, status: int) -> None:
        if response.status_code != status:
            failures.append(f"{response.request.url}: {response.status_code} {response.text}")

    def digits_client(seed: int) -> None:
        with httpx.Client(base_url=server, timeout=30) as http:
            for i in range(12):
                start = (seed * 12 + i) % (len(images) - 4)
                endpoint = ("infer", "score", "uncertainty")[i % 3]
                rows = images[start : start + 1 + i % 4]
                if endpoint == "uncertainty" and i % 2:
                    rows = noise[i % 8 : i % 8 + 2]
                expect(http.post(f"/v2/models/{digits}/{endpoint}", json=image_body(rows)), 200)

    with httpx.Client(base_url=server, timeout=60) as http:
        for round_ in range(ROUNDS):
            began = time.monotonic()
            threads = [
                threading.Thread(target=digits_client, args=(round_ * CLIENTS + c,))
                for c in range(CLIENTS)
            ]
            for thread in threads:
                thread.start()
            for endpoint in ("infer", "score"):
                expect(http.post(f"/v2/models/{text_model}/{endpoint}", json=text_body(TEXTS)), 200)
            # The tiny text model of a fresh clone is not calibrated: 409 is its answer then.
            uncertain = http.post(
                f"/v2/models/{text_model}/uncertainty", json=text_body([*TEXTS, *ODD_TEXTS])
            )
            if uncertain.status_code != 409:
                expect(uncertain, 200)
            # Errors: a wrong shape (400), values out of range (400), an unknown model (404),
            # a deadline already past (504, shed as reason="deadline").
            bad_shape = image_body(images[:1, :32])
            expect(http.post(f"/v2/models/{digits}/infer", json=bad_shape), 400)
            out_of_range = image_body(np.full((1, 64), 99.0, dtype=np.float32))
            expect(http.post(f"/v2/models/{digits}/score", json=out_of_range), 400)
            expect(http.post("/v2/models/no-such-model/infer", json=image_body(images[:1])), 404)
            expect(
                http.post(
                    f"/v2/models/{digits}/score",
                    json=image_body(images[:1]),
                    headers={"Request-Timeout": "0.000000001"},
                ),
                504,
            )
            for thread in threads:
                thread.join(timeout=60)
            time.sleep(max(0.0, ROUND_S - (time.monotonic() - began)))
    assert not failures, failures[:5]
