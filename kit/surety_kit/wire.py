"""A minimal HTTP/1.1 client over asyncio streams, for load generators.

Requests are pre-serialised bytes; a response is read as far as a load generator needs it (the
status line, ``Content-Length`` / chunked framing, ``Retry-After``, ``Connection: close``). A
1,024-connection generator on a 2-core machine must not itself eat the cores it measures, so
there is no HTTP library per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass

# uvicorn closes keep-alive connections idle for 5 s; reconnecting before that avoids sending a
# request into a connection the server is closing (which would read as a connection error).
KEEPALIVE_S = 4.0
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Endpoint:
    """Where the server listens."""

    host: str
    port: int

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """``http://host:port`` → Endpoint (only plain HTTP is spoken)."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or parts.hostname is None:
            raise ValueError(f"expected http://host:port, got {url!r}")
        return cls(parts.hostname, parts.port or 80)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def http_request(
    endpoint: Endpoint,
    method: str,
    path: str,
    body: bytes = b"",
    headers: Mapping[str, str] | None = None,
) -> bytes:
    """One complete HTTP/1.1 request, head and body, ready to write."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {endpoint.host}:{endpoint.port}"]
    if body or method in ("POST", "PUT"):
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@dataclass(frozen=True)
class Response:
    """What the generator needs of an answer."""

    status: int
    retry_after: float | None  # seconds; None when absent or not an integer
    close: bool


async def read_response(reader: asyncio.StreamReader) -> Response:
    """Read one response: status line, headers, then a Content-Length or chunked body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    retry_after: float | None = None
    close = chunked = False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"retry-after":
            with contextlib.suppress(ValueError):  # an HTTP-date is not what the contract says
                retry_after = float(int(value))
        elif name == b"connection":
            close = value.strip().lower() == b"close"
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
    if chunked:
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            await reader.readexactly(size + 2)
        await reader.readuntil(b"\r\n")
    elif length:
        await reader.readexactly(length)
    return Response(status, retry_after, close)


class Connection:
    """One keep-alive connection that reconnects when dropped, closed, or idle too long."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._last_used = 0.0

    async def _connect(self) -> None:
        self.close()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.endpoint.host, self.endpoint.port), CONNECT_TIMEOUT_S
        )
        self._reader, self._writer = reader, writer
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def ensure(self) -> None:
        """Connect if not connected, or if the server may be closing the idle connection."""
        if self._writer is None or time.perf_counter() - self._last_used > KEEPALIVE_S:
            await self._connect()

    async def exchange(self, request: bytes) -> Response:
        """Send one request and read its response on the current connection."""
        assert self._reader is not None and self._writer is not None
        self._writer.write(request)
        response = await read_response(self._reader)
        self._last_used = time.perf_counter()
        if response.close:
            self.close()
        return response

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


# Connection-level failures: counted by name, then the client reconnects.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    EOFError,  # asyncio.IncompleteReadError: the server closed mid-response
    asyncio.LimitOverrunError,
    TimeoutError,
    ValueError,  # an unparsable status line or length
)
