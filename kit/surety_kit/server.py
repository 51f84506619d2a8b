"""Server start-up: free ports, readiness, stopping, ``surety serve`` as a subprocess, and the app
served by uvicorn in a thread of the caller."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from surety_kit.wire import Endpoint

if TYPE_CHECKING:
    from surety_serving.settings import Settings

LOOPBACK = "127.0.0.1"
READY_PATH = "/v2/health/ready"

# Loopback is never proxied, whatever HTTP_PROXY says.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A port free on 127.0.0.1 now (the caller binds it soon after)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


class NotReadyError(RuntimeError):
    """The server exited, or did not answer ready in time."""


def answers(url: str, timeout: float = 1.0) -> int | None:
    """The status of a GET of ``url``; None when nothing answers."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return None


def _tail(log: Path | Callable[[], str] | None, lines: int = 60) -> str:
    if log is None:
        return ""
    text = log() if callable(log) else log.read_text(errors="replace")
    return "\n" + "\n".join(text.splitlines()[-lines:])


def wait_ready(
    url: str,
    process: subprocess.Popen[Any] | Callable[[], bool] | None = None,
    *,
    path: str = READY_PATH,
    timeout: float = 120.0,
    log: Path | Callable[[], str] | None = None,
    also: Callable[[], bool] | None = None,
    interval: float = 0.05,
) -> float:
    """Poll ``url + path`` until it answers 200 (and ``also()`` holds, when given); the seconds
    waited. :class:`NotReadyError`, with the tail of ``log``, when ``timeout`` passes or the server
    exits first (``process``: its Popen, or a callable that says whether it still runs)."""
    started = time.monotonic()
    while True:
        if isinstance(process, subprocess.Popen):
            exited = process.poll() is not None
        else:
            exited = process is not None and not process()
        if exited:
            raise NotReadyError(f"{url}: the server exited before it was ready{_tail(log)}")
        if answers(url + path) == 200 and (also is None or also()):
            return time.monotonic() - started
        if time.monotonic() - started > timeout:
            raise NotReadyError(f"{url}: not ready after {timeout:.0f} s{_tail(log)}")
        time.sleep(interval)


def stop_process(
    process: subprocess.Popen[Any], sig: int = signal.SIGTERM, timeout: float = 15.0
) -> None:
    """Send ``sig`` to a process still running, wait ``timeout`` for it, then kill it."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@dataclass(frozen=True)
class Served:
    """A server process answering ready on loopback."""

    url: str
    process: subprocess.Popen[bytes]
    log: Path | None = None

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint.parse(self.url)

    @property
    def port(self) -> int:
        return self.endpoint.port

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def started(
    command: Sequence[str | Path],
    port: int,
    *,
    env: Mapping[str, str | None] | None = None,
    log: Path | None = None,
    quiet: bool = False,
    path: str = READY_PATH,
    timeout: float = 120.0,
    also: Callable[[], bool] | None = None,
    stop_signal: int = signal.SIGTERM,
    stop_timeout: float = 60.0,
) -> Iterator[Served]:
    """Run ``command`` (a server that listens on ``port`` of loopback) until the block ends.

    ``env`` is laid over this process's environment (a None value removes the variable). The
    server's output goes to ``log`` when given (and its tail into a :class:`NotReadyError`), else to
    this process's (stdout to /dev/null when ``quiet``). Yields once ``path`` answers 200; stops
    the process with ``stop_signal`` on the way out, killing it after ``stop_timeout``; a
    process the block already stopped is left as it is.
    """
    environment = dict(os.environ)
    for name, value in (env or {}).items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    with ExitStack() as stack:
        output: Any = None
        if log is not None:
            output = stack.enter_context(log.open("wb"))
        elif quiet:
            output = subprocess.DEVNULL
        process = subprocess.Popen(
            [str(part) for part in command],
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT if log is not None else None,
        )
        stack.callback(stop_process, process, stop_signal, stop_timeout)
        url = f"http://{LOOPBACK}:{port}"
        wait_ready(url, process, path=path, timeout=timeout, log=log, also=also)
        yield Served(url, process, log)


def surety_command(*args: str | Path, executable: Path | None = None) -> list[str]:
    """The ``surety`` CLI with ``args``: ``executable`` when given, else the running
    virtualenv's console script, else ``python -m surety_serving.cli``."""
    script = executable or Path(sys.executable).with_name("surety")
    program = [str(script)] if script.exists() else [sys.executable, "-m", "surety_serving.cli"]
    return [*program, *map(str, args)]


@contextmanager
def serve(
    repository: Path,
    *options: str,
    port: int | None = None,
    env: Mapping[str, str | None] | None = None,
    executable: Path | None = None,
    **start: Any,
) -> Iterator[Served]:
    """``surety serve`` of ``repository`` on a free loopback port (``options`` added to its
    command line, e.g. ``"--workers", "2"``), logging warnings only unless ``env`` says
    otherwise; :func:`started`'s keywords apply."""
    port = port or free_port()
    command = surety_command(
        *("serve", "--model-repository", repository, "--host", LOOPBACK, "--port", str(port)),
        *options,
        executable=executable,
    )
    with started(
        command, port, env={"SURETY_LOG_LEVEL": "warning", **(env or {})}, **start
    ) as served:
        yield served


@contextmanager
def running_server(settings: Settings, timeout: float = 60.0) -> Iterator[str]:
    """Serve the app of ``settings`` with uvicorn in a thread on a free port; yield its URL.

    In the caller's process: for tests that reach into the server, or need no process of its
    own. Load that measures latency belongs in another process (the GIL is shared).
    """
    from surety_serving.server import build_server

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    server = build_server(settings.model_copy(update={"log_level": "warning"}))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise NotReadyError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()
