"""Where a batch-1 infer spends the server's CPU: py-spy samples of a loaded ``surety serve``.

One ``surety serve`` (one worker, batching as ``--batching`` says) serves the digits model; the
asyncio client of ``bench/serving.py`` keeps ``--clients`` closed-loop connections busy with
batch-1 JSON infers while ``py-spy record`` samples the server (``--rate`` Hz, idle frames
dropped). Printed: the busiest functions by inclusive and by self share of all samples, with
the thread they ran on (the event loop is ``MainThread``; ORT runs in ``surety-digits_*``).

    .venv/bin/python bench/profile_route.py [--seconds 20] [--clients 1] [--top 30]
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from serving import MODEL, load, repository_path, requests

from surety_kit.server import serve

PY_SPY = Path(sys.executable).parent / "py-spy"


def profile(pid: int, seconds: float, rate: int, out: Path) -> subprocess.Popen[bytes]:
    """Start py-spy on ``pid``: raw collapsed stacks, per thread, idle frames left out."""
    command = [str(PY_SPY), "record", "--pid", str(pid), "--duration", f"{seconds:g}",
               "--rate", str(rate), "--format", "raw", "--threads", "--output", str(out),
               "--nonblocking"]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def frame_name(frame: str) -> str:
    """``function (file.py:line)`` → ``function (package/file.py)``: lines merged."""
    function, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    return f"{function} ({'/'.join(parts[-2:])})"


def _records(raw: Path) -> list[str]:
    """One "stack count" record per sample; a frame name may span lines (a regex's source)."""
    records, pending = [], ""
    for line in raw.read_text().splitlines():
        pending += line
        if line.rpartition(" ")[2].isdigit():
            records.append(pending)
            pending = ""
    return records


def shares(raw: Path) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Total samples, and inclusive / self sample counts per (thread, function)."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    for line in _records(raw):
        stack, _, count_text = line.rpartition(" ")
        frames = stack.split(";")
        count = int(count_text)
        # py-spy --threads: "process ...;thread (0x..) name;frame;frame;..."
        thread = next((f.split(")")[-1].strip() or f for f in frames if f.startswith("thread")), "")
        thread = "MainThread" if "MainThread" in thread else thread.split("_")[0] or "?"
        names = [frame_name(f) for f in frames if not f.startswith(("process", "thread"))]
        total += count
        for name in set(names):
            inclusive[f"{thread}: {name}"] += count
        if names:
            own[f"{thread}: {names[-1]}"] += count
    return total, inclusive, own


def main() -> None:
    """Serve, load, sample, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-repository", type=Path, default=None)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=1)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--batching", choices=("on", "off"), default="on")
    args = parser.parse_args()
    repository = repository_path(args.model_repository)
    env = {"SURETY_BATCHING": str(args.batching == "on").lower(), "SURETY_WORKERS": "1"}
    raw = Path(tempfile.mkdtemp(prefix="surety-profile-")) / f"{MODEL}.txt"
    with serve(repository, "--workers", "1", env=env, timeout=90, stop_timeout=30) as server:
        port = server.port
        payloads = requests(port)
        load(port, payloads, args.clients, 2.0)  # warm-up
        spy = profile(server.pid, args.seconds, args.rate, raw)
        time.sleep(1.0)  # py-spy attaches
        figures: list[float] = []
        worker = threading.Thread(
            target=lambda: figures.append(load(port, payloads, args.clients, args.seconds).rps)
        )
        worker.start()
        worker.join()
        _, err = spy.communicate(timeout=120)
        if spy.returncode:
            raise SystemExit(f"py-spy failed: {err.decode()}")
    total, inclusive, own = shares(raw)
    print(f"{args.clients} client(s), {figures[0]:.0f} req/s, {total} samples at {args.rate} Hz")
    print(f"raw stacks: {raw}\n")
    for title, counter in (("inclusive", inclusive), ("self", own)):
        print(f"| {title} % | thread: function |\n|---:|---|")
        for name, count in counter.most_common(args.top):
            print(f"| {100 * count / total:.1f} | {name} |")
        print()


if __name__ == "__main__":
    main()
