"""Peers: Surety against KServe's ModelServer and a minimal FastAPI "floor", one command.

Four servers, each one process with one worker, all serving the digits model (custom op from
``kernels.library_path()``) with the same ONNX Runtime version and session options:

- ``surety (batching on)`` / ``surety (batching off)``: ``.venv/bin/surety serve``,
  ``SURETY_BATCHING=true/false``, ``SURETY_WORKERS=1``;
- ``kserve``: ``kserve.ModelServer`` with a ``kserve.Model`` subclass
  (``bench/peers/kserve_app.py``), in its own virtualenv ``build/peers/kserve`` (made and cached
  on first run, pinned to our onnxruntime version);
- ``floor``: FastAPI + uvicorn + orjson, parse, ``session.run``, answer, nothing else
  (``bench/peers/floor.py``, in our own .venv).

Parity first: the same batch-1 request to each must give the reference logits (a direct
``session.run``) within 1e-6. Then ``wrk`` (closed loop, batch-1 v2 JSON infers of 64 real
digits, rotating) at c=1 (1 thread) and c=32 (2 threads), ``--rounds`` rounds interleaved across
the servers, ``--seconds`` each; medians over rounds. p99 from wrk's latency distribution; CPU
ms/request from /proc utime+stime of the server's whole process tree over the interval, divided
by the requests wrk completed.

    .venv/bin/python bench/peers.py [--seconds 8] [--rounds 3] [--skip-kserve]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
from serving import free_port, wait_ready
from sklearn.datasets import load_digits

import kernels

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
VENVS = ROOT / "build" / "peers"
MODEL = "digits"
PATH = f"/v2/models/{MODEL}/infer"
TICKS = os.sysconf("SC_CLK_TCK")

LUA = """
local bodies = {%s}
local i = 0
request = function()
  i = i %% #bodies + 1
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, bodies[i])
end
done = function(summary, latency, requests)
  io.write(string.format("PEERS %%d %%d %%d %%d %%f\\n", summary.requests,
    summary.errors.status + summary.errors.connect + summary.errors.read
    + summary.errors.write + summary.errors.timeout,
    summary.duration, latency:percentile(99), latency:percentile(50)))
end
"""


@dataclass
class Run:
    """One wrk run against one server."""

    requests: int
    seconds: float
    p99_ms: float
    p50_ms: float
    cpu_s: float

    @property
    def rps(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds

    @property
    def cpu_ms(self) -> float:
        """Server CPU (process tree) per completed request, ms."""
        return self.cpu_s / self.requests * 1e3


def bodies(images: np.ndarray) -> list[bytes]:
    """Batch-1 v2 JSON infer bodies of real digits."""
    return [
        orjson.dumps(
            {"inputs": [{"name": "image", "shape": [1, 64], "datatype": "FP32", "data": image}]},
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        for image in images[:64]
    ]


def tree_cpu_seconds(pid: int) -> float:
    """utime+stime of ``pid`` and all its live descendants (plus reaped children's)."""
    total = 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += sum(int(f) for f in fields[11:15]) / TICKS  # utime stime cutime cstime
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_cpu_seconds(int(child))
    except (FileNotFoundError, ProcessLookupError):
        pass
    return total


def kserve_python() -> Path:
    """The kserve peer's interpreter; the virtualenv is made on first use."""
    python = VENVS / "kserve" / "bin" / "python"
    if not python.exists():
        print("creating build/peers/kserve (pip install kserve, first run only) ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(python.parent.parent)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", "kserve",
                        f"onnxruntime=={ort.__version__}"], check=True, timeout=600)  # fmt: skip
    return python


@contextlib.contextmanager
def started(name: str, model: Path) -> Iterator[tuple[int, int]]:
    """Start the named server; yields (port, pid)."""
    port = free_port()
    env = {**os.environ, "PEER_MODEL": str(model / "1" / "model.onnx"),
           "PEER_LIBRARY": kernels.library_path(), "PEER_MODEL_NAME": MODEL,
           "PEER_PORT": str(port), "SURETY_LOG_LEVEL": "warning",
           "SURETY_WORKERS": "1"}  # fmt: skip
    bin_ = Path(sys.executable).parent
    if name.startswith("surety"):
        env["SURETY_BATCHING"] = "true" if "on" in name else "false"
        command = [str(bin_ / "surety"), "serve", "--port", str(port), "--workers", "1",
                   "--model-repository", str(model.parent)]  # fmt: skip
    elif name == "floor":
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(PEERS), "floor:app",
                   "--port", str(port), "--workers", "1", "--log-level", "warning",
                   "--no-access-log"]  # fmt: skip
    else:
        command = [str(kserve_python()), str(PEERS / "kserve_app.py")]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        wait_ready(port, process, "/v2/health/ready")
        yield port, process.pid
    finally:
        process.terminate()
        process.wait(timeout=30)


def logits(port: int, body: bytes) -> np.ndarray:
    """The ``logits`` output of one infer."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{PATH}", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request) as r:
        outputs = orjson.loads(r.read())["outputs"]
    return np.asarray(next(o["data"] for o in outputs if o["name"] == "logits"), np.float32)


def reference(model: Path, image: np.ndarray) -> np.ndarray:
    """Direct ``session.run`` logits for one image."""
    options = ort.SessionOptions()
    options.register_custom_ops_library(kernels.library_path())
    session = ort.InferenceSession(str(model / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    feeds = {"image": image[None, :], "scale": np.ones((1, 1), np.float32)}
    names = [o.name for o in session.get_outputs()]
    return np.asarray(session.run(None, feeds)[names.index("logits")][0])


def wrk(port: int, pid: int, script: Path, clients: int, seconds: float) -> Run:
    """One closed-loop wrk run; the server's CPU over the same interval."""
    threads = 1 if clients == 1 else 2
    command = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds:g}s", "--latency",
               "-s", str(script), f"http://127.0.0.1:{port}"]  # fmt: skip
    cpu0 = tree_cpu_seconds(pid)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"wrk failed: {done.stdout}{done.stderr}")
    out = done.stdout
    cpu = tree_cpu_seconds(pid) - cpu0
    line = next(x for x in out.splitlines() if x.startswith("PEERS "))
    requests, errors, duration_us, p99_us, p50_us = line.split()[1:]
    if int(errors):
        raise RuntimeError(f"wrk reported {errors} errors:\n{out}")
    return Run(int(requests), int(duration_us) / 1e6, int(p99_us) / 1e3, float(p50_us) / 1e3, cpu)


def main() -> None:
    """Parity, then interleaved rounds, then the table and the targets."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", type=Path, default=ROOT / "model_repository" / MODEL)
    parser.add_argument("--skip-kserve", action="store_true")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk missing: installing the Debian package", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True)

    names = ["surety (batching on)", "surety (batching off)", "floor"]
    if args.skip_kserve:
        print("!! KSERVE SKIPPED (--skip-kserve): no KServe figures or ratios", flush=True)
    else:
        try:
            kserve_python()
            names.append("kserve")
        except (subprocess.SubprocessError, OSError) as failure:
            print(f"!! KSERVE SKIPPED: could not build build/peers/kserve ({failure})", flush=True)
    images = load_digits().data.astype(np.float32)
    payloads = bodies(images)
    expected = reference(args.model, images[0])
    work = Path(tempfile.mkdtemp(prefix="surety-peers-"))
    runs: dict[tuple[str, int], list[Run]] = {(n, c): [] for n in names for c in (1, 32)}

    with contextlib.ExitStack() as stack:
        servers = {n: stack.enter_context(started(n, args.model)) for n in names}
        for name, (port, _) in servers.items():
            got = logits(port, payloads[0])
            error = float(np.max(np.abs(got - expected)))
            print(f"parity {name:24} max |Δlogit| {error:.2e}", flush=True)
            if error > 1e-6:
                raise SystemExit(f"parity failed for {name}: {got} vs {expected}")
        scripts = {}
        for name, (port, pid) in servers.items():
            literal = ",".join(f"[==[{b.decode()}]==]" for b in payloads)
            scripts[name] = work / f"{name.split()[0]}-{port}.lua"
            scripts[name].write_text(LUA % (literal, PATH))
            wrk(port, pid, scripts[name], 32, 1.0)  # warm-up
        for round_ in range(args.rounds):
            for name, (port, pid) in servers.items():
                for clients in (1, 32):
                    run = wrk(port, pid, scripts[name], clients, args.seconds)
                    runs[name, clients].append(run)
                    print(
                        f"round {round_ + 1} {name:24} c={clients:<3} {run.rps:8.0f} req/s "
                        f"p99 {run.p99_ms:7.2f} ms  CPU {run.cpu_ms:.3f} ms/req",
                        flush=True,
                    )
    report(names, runs, args)


def report(
    names: list[str], runs: dict[tuple[str, int], list[Run]], args: argparse.Namespace
) -> None:
    """The markdown table, ratios, and the two targets."""

    def med(name: str, clients: int, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in runs[name, clients]))

    print(f"\n{args.rounds} rounds x {args.seconds:g} s, medians; one worker per server\n")
    header = ("| server | req/s c=1 | req/s c=32 | p99 c=32 (ms) | CPU ms/req c=1 / c=32 "
              "| c=32 req/s vs KServe | c=32 req/s vs floor |")  # fmt: skip
    print(header)
    print("|" + "---|" * 7)
    for name in names:
        rps32 = med(name, 32, "rps")
        vs_k = f"{rps32 / med('kserve', 32, 'rps'):.2f}x" if "kserve" in names else "—"
        print(f"| {name} | {med(name, 1, 'rps'):.0f} | {rps32:.0f} | {med(name, 32, 'p99_ms'):.2f} "
              f"| {med(name, 1, 'cpu_ms'):.3f} / {med(name, 32, 'cpu_ms'):.3f} | {vs_k} "
              f"| {rps32 / med('floor', 32, 'rps'):.2f}x |")  # fmt: skip
    print()
    for variant in ("surety (batching on)", "surety (batching off)"):
        cpu, floor = med(variant, 1, "cpu_ms"), med("floor", 1, "cpu_ms")
        verdict = "met" if cpu <= floor + 0.15 else "MISSED"
        print(f"target CPU/req c=1 <= floor + 0.15 ms, {variant}: {cpu:.3f} vs "
              f"{floor:.3f} + 0.15 (+{cpu - floor:.3f}) -> {verdict}")  # fmt: skip
    if "kserve" not in names:
        print("targets vs KServe: not measured (KServe skipped)")
        return
    for variant in ("surety (batching on)", "surety (batching off)"):
        ratio = med(variant, 32, "rps") / med("kserve", 32, "rps")
        p99, kp99 = med(variant, 32, "p99_ms"), med("kserve", 32, "p99_ms")
        verdict = "met" if ratio >= 2 and p99 <= kp99 else "MISSED"
        print(f"target c=32 >= 2x KServe with p99 <= KServe's, {variant}: {ratio:.2f}x, "
              f"p99 {p99:.2f} vs {kp99:.2f} ms -> {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
