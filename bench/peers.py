"""Peers: Surety against KServe's ModelServer and a minimal FastAPI "floor", one command.

Two modes, ``--model digits`` (the default) and ``--model fortune-topics`` (text).

Digits: five servers, each one process unless named, all serving the digits model (custom op
from ``surety_serving.kernels.library_path()``) with the same ONNX Runtime version and session
options:

- ``surety (batching on)`` / ``surety (batching off)``: ``.venv/bin/surety serve --workers 1``,
  ``SURETY_BATCHING=true/false``;
- ``surety (batching on, N workers)``: the same with ``--workers N`` (``--workers``, default 2;
  1 leaves it out);
- ``kserve``: ``kserve.ModelServer`` with a ``kserve.Model`` subclass
  (``bench/peers/kserve_app.py``), in its own virtualenv ``build/peers/kserve`` (made and cached
  on first run, pinned to our onnxruntime version);
- ``floor``: FastAPI + uvicorn + orjson, parse, ``session.run``, answer, nothing else
  (``bench/peers/floor.py``, in our own .venv).

Text (fortune-topics): Surety's ``POST /v2/models/fortune-topics/score`` (batching on and off)
against the floor's ``/score``, which tokenizes with ``tokenizers`` (the version's
``tokenizer.json``, the config's ``max_length``, padded to the longest text of the request), runs
the same session and answers the same three outputs; KServe takes no part. The requests are
batch-1 ``/score`` bodies of the first 200 texts of the held-out test split (export.json's
``test_file``).

Parity first: the same batch-1 requests (the first four) to each server must give the reference
output (a direct ``session.run``: logits for digits; for text, probabilities of the feeds
Surety's text decoder makes) within 1e-6. Then ``wrk`` (closed loop, the bodies rotating) at c=1
(1 thread) and c=32 (2 threads), ``--rounds`` rounds interleaved across the servers,
``--seconds`` each; medians over rounds. p99 from wrk's latency distribution; CPU ms/request from
/proc utime+stime of the server's whole process tree over the interval, divided by the requests
wrk completed.

    .venv/bin/python bench/peers.py [--model digits] [--seconds 8] [--rounds 3] [--skip-kserve]
                                    [--workers 2]
    .venv/bin/python bench/peers.py --model fortune-topics [--seconds 8] [--rounds 3]
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
from text_serving import test_split

from surety_kit import server as kit
from surety_kit.payloads import digit_images, digits_tensor, oip_body, text_tensor
from surety_serving import kernels
from surety_serving.protocol.types import Tensor
from surety_serving.runtime.config import load_config
from surety_serving.runtime.decoders import TextDecoder, build_decoders

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / "bench" / "peers"
VENVS = ROOT / "build" / "peers"
TICKS = os.sysconf("SC_CLK_TCK")
PARITY = 4  # requests checked against the reference before any load
TEXTS = 200  # held-out texts the text mode rotates

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


@dataclass(frozen=True)
class Workload:
    """What one mode serves and sends."""

    model: str  # the entry's name in the repository
    route: str  # "infer" (digits) or "score" (text: the server tokenizes)
    payloads: list[bytes]  # batch-1 JSON bodies, rotated by wrk
    expected: list[np.ndarray]  # the reference `output` of the first PARITY payloads
    output: str  # the output compared for parity
    # What the floor needs beyond the session (text: tokenizer, max_length, labels).
    floor_env: dict[str, str] = field(default_factory=dict)
    cpu_target_ms: float | None = None  # Surety's CPU/request target at c=1 over the floor's

    @property
    def path(self) -> str:
        """The route wrk and the parity check post to."""
        return f"/v2/models/{self.model}/{self.route}"


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


def reference(entry: Path, feeds: list[dict[str, np.ndarray]], output: str) -> list[np.ndarray]:
    """Direct ``session.run`` of ``output`` for each of ``feeds`` (``scale`` at ones)."""
    options = ort.SessionOptions()
    options.register_custom_ops_library(kernels.library_path())
    session = ort.InferenceSession(str(entry / "1" / "model.onnx"), options,
                                   providers=["CPUExecutionProvider"])  # fmt: skip
    scale = {"scale": np.ones((1, 1), np.float32)}
    return [np.asarray(session.run([output], {**f, **scale})[0][0]) for f in feeds]


def digits_workload(entry: Path) -> Workload:
    """Batch-1 v2 JSON infers of 64 real digits; parity on the logits."""
    images = digit_images()[:64]
    payloads = [oip_body(digits_tensor(image)) for image in images]
    expected = reference(entry, [{"image": i[None, :]} for i in images[:PARITY]], "logits")
    return Workload("digits", "infer", payloads, expected, "logits", cpu_target_ms=0.15)


def text_workload(entry: Path) -> Workload:
    """Batch-1 ``/score`` bodies of held-out texts; parity on the probabilities of the feeds
    Surety's own text decoder makes."""
    texts = test_split(entry)[0][:TEXTS]
    payloads = [oip_body(text_tensor([text])) for text in texts]
    config = load_config(entry / "config.yaml")
    (decoder,) = build_decoders(config, entry / "1").values()
    assert isinstance(decoder, TextDecoder)
    feeds = [
        decoder(Tensor("text", "BYTES", np.array([text.encode()], dtype=object))).feeds
        for text in texts[:PARITY]
    ]
    floor_env = {"PEER_TOKENIZER": str(entry / "1" / "tokenizer.json"),
                 "PEER_MAX_LENGTH": str(decoder.max_length),
                 "PEER_LABELS": str(entry / "labels.txt")}  # fmt: skip
    expected = reference(entry, feeds, "probabilities")
    return Workload(entry.name, "score", payloads, expected, "probabilities", floor_env)


WORKLOADS = {"digits": digits_workload, "fortune-topics": text_workload}


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
def started(
    name: str, model: Path, workload: Workload, workers: int = 1
) -> Iterator[tuple[int, int]]:
    """Start the named server (Surety with ``workers`` processes); yields (port, pid)."""
    port = kit.free_port()
    env = {"PEER_MODEL": str(model / "1" / "model.onnx"),
           "PEER_LIBRARY": kernels.library_path(), "PEER_MODEL_NAME": workload.model,
           "PEER_PORT": str(port), "SURETY_LOG_LEVEL": "warning"}  # fmt: skip
    if name.startswith("surety"):
        env["SURETY_BATCHING"] = "true" if "on" in name else "false"
        command = kit.surety_command("serve", "--port", str(port), "--workers", str(workers),
                                     "--model-repository", model.parent)  # fmt: skip
    elif name == "floor":
        env.update(workload.floor_env)
        command = [sys.executable, "-m", "uvicorn", "--app-dir", str(PEERS), "floor:app",
                   "--port", str(port), "--workers", "1", "--log-level", "warning",
                   "--no-access-log"]  # fmt: skip
    else:
        command = [str(kserve_python()), str(PEERS / "kserve_app.py")]
    with kit.started(command, port, env=env, quiet=True, timeout=90, stop_timeout=30) as server:
        yield port, server.pid


def served(port: int, workload: Workload, body: bytes) -> np.ndarray:
    """The parity output of one request."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{workload.path}", data=body,
                                     headers={"Content-Type": "application/json"})  # fmt: skip
    with urllib.request.urlopen(request) as r:
        outputs = orjson.loads(r.read())["outputs"]
    return np.asarray(next(o["data"] for o in outputs if o["name"] == workload.output), np.float32)


def wrk(port: int, pid: int, script: Path, clients: int, seconds: float) -> Run:
    """One closed-loop wrk run; the server's CPU over the same interval."""
    threads = 1 if clients == 1 else 2
    # --timeout: at c=32 a text request may queue for seconds behind the others (about 15 ms of
    # CPU each); wrk's default of 2 s would count it as an error and drop it from the latencies.
    command = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{seconds:g}s", "--latency",
               "--timeout", "30s", "-s", str(script), f"http://127.0.0.1:{port}"]  # fmt: skip
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
    parser.add_argument("--model", choices=sorted(WORKLOADS), default="digits")
    parser.add_argument("--model-repository", type=Path, default=ROOT / "model_repository")
    parser.add_argument("--skip-kserve", action="store_true", help="digits: KServe left out")
    parser.add_argument(
        "--workers", type=int, default=2, help="also Surety (batching on) with N processes"
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("wrk missing: installing the Debian package", flush=True)
        subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=True)

    names = ["surety (batching on)", "surety (batching off)", "floor"]
    processes = dict.fromkeys(names, 1)
    if args.workers > 1:
        names.insert(1, multi := f"surety (batching on, {args.workers} workers)")
        processes[multi] = args.workers
    if args.model != "digits":
        print(f"KServe: digits only; {args.model} runs Surety against the floor", flush=True)
    elif args.skip_kserve:
        print("!! KSERVE SKIPPED (--skip-kserve): no KServe figures or ratios", flush=True)
    else:
        try:
            kserve_python()
            names.append("kserve")
        except (subprocess.SubprocessError, OSError) as failure:
            print(f"!! KSERVE SKIPPED: could not build build/peers/kserve ({failure})", flush=True)
    entry = args.model_repository / args.model
    workload = WORKLOADS[args.model](entry)
    work = Path(tempfile.mkdtemp(prefix="surety-peers-"))
    runs: dict[tuple[str, int], list[Run]] = {(n, c): [] for n in names for c in (1, 32)}

    with contextlib.ExitStack() as stack:
        servers = {
            n: stack.enter_context(started(n, entry, workload, processes.get(n, 1))) for n in names
        }
        for name, (port, _) in servers.items():
            error = 0.0
            for body, expected in zip(workload.payloads, workload.expected, strict=False):
                got = served(port, workload, body)
                error = max(error, float(np.max(np.abs(got - expected))))
                if error > 1e-6:
                    raise SystemExit(f"parity failed for {name}: {got} vs {expected}")
            print(f"parity {name:24} max |Δ{workload.output}| {error:.2e}", flush=True)
        # Each body goes into the script as a Lua long string [==[...]==]; a text holding "]==]"
        # would end it early.
        if any(b"]==]" in b for b in workload.payloads):
            raise SystemExit("a body holds ]==], which ends a Lua long string")
        literal = ",".join(f"[==[{b.decode()}]==]" for b in workload.payloads)
        scripts = {}
        for name, (port, pid) in servers.items():
            scripts[name] = work / f"{name.split()[0]}-{port}.lua"
            scripts[name].write_text(LUA % (literal, workload.path))
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
    report(names, runs, args, workload)


def report(
    names: list[str],
    runs: dict[tuple[str, int], list[Run]],
    args: argparse.Namespace,
    workload: Workload,
) -> None:
    """The markdown table, ratios, and the targets."""

    def med(name: str, clients: int, field: str) -> float:
        return float(statistics.median(getattr(r, field) for r in runs[name, clients]))

    print(f"\n{workload.path}: {args.rounds} rounds x {args.seconds:g} s, medians; "
          "one worker per server unless named\n")  # fmt: skip
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
        ratio = med(variant, 32, "rps") / med("floor", 32, "rps")
        print(f"{variant}: c=32 req/s {ratio:.2f}x the floor's; CPU/req c=1 {cpu:.3f} vs "
              f"floor {floor:.3f} ms ({cpu - floor:+.3f})")  # fmt: skip
        if workload.cpu_target_ms is not None:
            target = workload.cpu_target_ms
            verdict = "met" if cpu <= floor + target else "MISSED"
            print(f"target CPU/req c=1 <= floor + {target:g} ms, {variant}: {verdict}")
    if args.workers > 1:
        multi = f"surety (batching on, {args.workers} workers)"
        gain = med(multi, 32, "rps") / med("surety (batching on)", 32, "rps")
        verdict = "met" if gain >= 1.6 else "MISSED"
        print(f"target c=32 with --workers {args.workers} >= 1.6x one worker: {gain:.2f}x "
              f"-> {verdict}")  # fmt: skip
    if "kserve" not in names:
        print("targets vs KServe: not measured (KServe not in this run)")
        return
    for variant in ("surety (batching on)", "surety (batching off)"):
        ratio = med(variant, 32, "rps") / med("kserve", 32, "rps")
        p99, kp99 = med(variant, 32, "p99_ms"), med("kserve", 32, "p99_ms")
        verdict = "met" if ratio >= 2 and p99 <= kp99 else "MISSED"
        print(f"target c=32 >= 2x KServe with p99 <= KServe's, {variant}: {ratio:.2f}x, "
              f"p99 {p99:.2f} vs {kp99:.2f} ms -> {verdict}")  # fmt: skip


if __name__ == "__main__":
    main()
