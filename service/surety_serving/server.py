"""uvicorn as Surety runs it: a bound on slow request heads, and a drain on SIGTERM.

Shutdown, from the first SIGTERM:

1. at once, ``/v2/health/ready`` answers 503 while every request (new ones too) is still
   served, for ``drain_s``: load balancers see the replica leave before its listener closes;
2. then the listener closes and requests in flight finish;
3. at ``shutdown_timeout_s`` after the signal, whatever is still unanswered gets 503 and the
   process exits 0.

SIGINT (Ctrl-C) skips the drain window; a second signal forces the exit.

With ``processes`` > 1 (``surety serve --workers N``) this process binds the port and starts N
worker processes that share the socket, each running the server above with its own copy of
every model (`serve_workers`). It forwards SIGTERM and SIGINT to them, so the group drains and
exits as one process would; a worker that dies on its own stops the group (exit 1) for the
orchestrator to restart it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
from multiprocessing.connection import wait
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from surety_serving.main import create_app
from surety_serving.metrics import MULTIPROC_ENV
from surety_serving.runtime.dataplane import DataPlane
from surety_serving.settings import Settings

log = logging.getLogger(__name__)


class ServingConfig(uvicorn.Config):
    """uvicorn's config plus the request-head timeout our protocol reads."""

    def __init__(self, app: FastAPI, header_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(app, http=HeadTimeoutProtocol, **kwargs)
        self.header_timeout_s = header_timeout_s


class HeadTimeoutProtocol(HttpToolsProtocol):
    """httptools HTTP/1.1, closing connections whose request head is not complete in time.

    uvicorn bounds idle keep-alive connections but not a head that trickles in (or a
    connection that never sends one), which would hold the connection forever.
    """

    def __init__(self, config: ServingConfig, **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._head_timeout = config.header_timeout_s
        self._head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._disarm_head_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_timer = self.loop.call_later(self._head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()


class SuretyServer(uvicorn.Server):
    """uvicorn's server with the drain described in the module docstring."""

    def __init__(self, app: FastAPI, settings: Settings, **kwargs: Any) -> None:
        super().__init__(
            ServingConfig(
                app,
                header_timeout_s=settings.header_timeout_s,
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level,
                access_log=settings.access_log,
                lifespan="on",
                # A net under our own bound: tasks left when it passes are cancelled.
                timeout_graceful_shutdown=int(settings.shutdown_timeout_s) + 1,
                **kwargs,
            )
        )
        self.app = app
        self.settings = settings
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        """Serve until shut down (uvicorn's ``serve``, remembering the loop for signals)."""
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """The first signal starts the shutdown (after the drain window for SIGTERM)."""
        first = not self._stopping
        self._stopping = True
        if first and self._loop is not None:
            drain = sig == signal.SIGTERM and self.settings.drain_s > 0
            self._loop.call_soon_threadsafe(self.begin_shutdown, drain)
            if drain:
                return
        super().handle_exit(sig, frame)
        # uvicorn would re-raise the signal after shutting down (exit status 128 + n); a
        # shutdown that went as planned exits 0.
        self._captured_signals.clear()

    def begin_shutdown(self, drain: bool) -> None:
        """Readiness 503 now; stop listening after the drain window; close at the bound."""
        assert self._loop is not None
        plane: DataPlane | None = getattr(self.app.state, "dataplane", None)
        if plane is not None:
            plane.models.draining = True
        settings = self.settings
        log.info(
            "shutting down: readiness 503, %s, unanswered requests get 503 after %g s",
            f"serving on for {settings.drain_s:g} s" if drain else "no drain window",
            settings.shutdown_timeout_s,
        )
        if drain:
            self._loop.call_later(settings.drain_s, self._stop_listening)
        self._loop.call_later(settings.shutdown_timeout_s, self._close, plane)

    def _stop_listening(self) -> None:
        self.should_exit = True

    def _close(self, plane: DataPlane | None) -> None:
        log.warning("shutdown bound of %g s reached", self.settings.shutdown_timeout_s)
        self.should_exit = True
        if plane is not None:
            plane.models.close()


def build_server(settings: Settings) -> SuretyServer:
    """The app for ``settings`` under a configured server (not yet started)."""
    return SuretyServer(create_app(settings), settings)


def serve(settings: Settings) -> int:
    """Serve until shut down, in ``settings.processes`` processes; the exit status."""
    if settings.processes == 1:
        build_server(settings).run()
        return 0
    return serve_workers(settings)


def serve_workers(settings: Settings) -> int:
    """Bind the port, run ``settings.processes`` workers on it, and wait for them all.

    prometheus-client's multiprocess mode keeps every value in a file of a directory of ours,
    made before the workers start (they read the variable when they import the client) and
    removed when they are all gone.
    """
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((settings.host, settings.port))
    sock.set_inheritable(True)
    metrics_dir = tempfile.mkdtemp(prefix="surety-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(target=_worker, args=(settings, sock), name=f"surety-worker-{n}")
        for n in range(settings.processes)
    ]
    stopping = False

    def forward(sig: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        for worker in workers:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, sig)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    status = 0
    try:
        for worker in workers:
            worker.start()
        log.info(
            "serving on %s:%d in %d worker processes (pids %s), %d inference threads each",
            settings.host,
            sock.getsockname()[1],
            len(workers),
            ", ".join(str(worker.pid) for worker in workers),
            settings.workers(),
        )
        running = list(workers)
        while running:
            wait([worker.sentinel for worker in running])
            for worker in [worker for worker in running if not worker.is_alive()]:
                worker.join()
                running.remove(worker)
                assert worker.pid is not None
                _mark_dead(worker.pid, metrics_dir)
                if worker.exitcode != 0:
                    status = 1
                    if not stopping:
                        log.error("%s exited with %s: stopping", worker.name, worker.exitcode)
                        forward(signal.SIGTERM, None)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for worker in workers:
            if worker.is_alive():
                worker.kill()
                worker.join()
        sock.close()
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return status


def _mark_dead(pid: int, metrics_dir: str) -> None:
    # Imported here: the client reads the multiprocess variable when first imported.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]


def _worker(settings: Settings, sock: socket.socket) -> None:
    """One worker process: the single-process server on the shared socket."""
    # Out of the terminal's process group: Ctrl-C reaches the parent only, which forwards it
    # once (a second signal to a worker forces its exit).
    os.setpgrp()
    logging.getLogger().setLevel(settings.log_level.upper())
    build_server(settings).run(sockets=[sock])
