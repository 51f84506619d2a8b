"""Optional API keys: ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.

With no key configured (``SURETY_API_KEYS``, ``SURETY_API_KEYS_FILE``) nothing is checked and
nothing about keys is documented. Keys are held only as SHA-256 digests, computed once when the
app is built; a presented key is hashed and compared with every digest in constant time and
without an early exit, so the answer's timing tells neither how close a guess came nor which key
matched. The check is a dependency of the routes, so it runs before a body is read.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.params import Depends as Dependency
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.exceptions import HTTPException

from surety_serving.api.responses import Responses, error_response
from surety_serving.settings import Settings

BEARER = HTTPBearer(
    scheme_name="bearer", auto_error=False, description="`Authorization: Bearer <key>`"
)
API_KEY = APIKeyHeader(
    name="X-API-Key", scheme_name="api_key", auto_error=False, description="`X-API-Key: <key>`"
)
#: RFC 6750's challenge: the scheme a client should use.
CHALLENGE = {"WWW-Authenticate": "Bearer"}
UNAUTHORIZED = 401


class Access(Enum):
    """Who may call a router when keys are configured."""

    #: Liveness and readiness: load balancers and orchestrators probe without a key.
    OPEN = "open"
    #: Everything that reveals models or runs them.
    KEY = "key"
    #: ``/metrics``: a key only with ``SURETY_METRICS_REQUIRE_KEY`` (scrapers often have none).
    METRICS = "metrics"


class UnauthorizedError(HTTPException):
    """No API key, or one that is not accepted."""

    def __init__(self, detail: str) -> None:
        super().__init__(UNAUTHORIZED, detail, headers=CHALLENGE)


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@dataclass(frozen=True)
class KeyRing:
    """The SHA-256 digests of the accepted keys."""

    digests: tuple[bytes, ...]

    def accepts(self, key: str) -> bool:
        """Whether ``key`` is one of the keys; the same work whichever key (if any) matches."""
        presented = _digest(key)
        matched = False
        for digest in self.digests:
            matched |= hmac.compare_digest(presented, digest)
        return matched

    async def require_key(
        self,
        request: Request,
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
        api_key: Annotated[str | None, Security(API_KEY)],
    ) -> None:
        """The route dependency: 401 unless the request carries an accepted key.

        A Bearer key is checked when there is one. An Authorization header of another scheme
        falls through to X-API-Key: a proxy in front may pass its own on (nginx's basic auth).
        """
        key = bearer.credentials if bearer is not None else api_key
        if key is None:
            if "authorization" in request.headers:
                raise UnauthorizedError("the Authorization header must be 'Bearer <key>'")
            raise UnauthorizedError(
                "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key: <key>'"
            )
        if not self.accepts(key):
            raise UnauthorizedError("the API key is not accepted")

    async def authenticate(self, request: Request) -> None:
        """``require_key`` outside FastAPI's dependency injection (the inference fast path),
        with the same two header schemes parsing the headers."""
        await self.require_key(request, await BEARER(request), await API_KEY(request))


def read_digests(path: Path) -> tuple[bytes, ...]:
    """The digests of a keys file: SHA-256 hex digests, one a line; ``#`` starts a comment.

    Errors name the line but never show it: it might hold a key pasted by mistake.
    """
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ValueError(f"cannot read the API keys file {path}: {exc.strerror}") from None
    digests = []
    for number, line in enumerate(lines, 1):
        entry = line.partition("#")[0].strip()
        if not entry:
            continue
        try:
            digest = bytes.fromhex(entry)
        except ValueError:
            digest = b""
        if len(digest) != hashlib.sha256().digest_size:
            raise ValueError(
                f"{path}:{number}: not a SHA-256 hex digest (64 hex digits); store "
                "digests of keys, e.g. printf %s KEY | sha256sum"
            )
        digests.append(digest)
    if not digests:
        # A file set but empty would lock every client out without saying why.
        raise ValueError(f"the API keys file {path} holds no key digests")
    return tuple(digests)


def load_keyring(settings: Settings) -> KeyRing | None:
    """The configured keys, or None when auth is off (no key set anywhere)."""
    digests = tuple(_digest(key.get_secret_value()) for key in settings.api_keys)
    if settings.api_keys_file is not None:
        digests += read_digests(settings.api_keys_file)
    return KeyRing(digests) if digests else None


@dataclass(frozen=True)
class Guard:
    """What ``include_router`` adds to a router: the key check and its documented 401."""

    dependencies: list[Dependency] = field(default_factory=list)
    responses: Responses = field(default_factory=dict)


def guards(settings: Settings, keyring: KeyRing | None) -> dict[Access, Guard]:
    """The guard of each access level under ``settings`` with ``keyring`` (None: keys off)."""
    if keyring is None:
        return dict.fromkeys(Access, Guard())
    challenge = {
        name: {"description": "the scheme to authenticate with", "schema": {"type": "string"}}
        for name in CHALLENGE
    }
    unauthorized = error_response(UNAUTHORIZED, [UnauthorizedError.__doc__ or ""], challenge)
    keyed = Guard([Depends(keyring.require_key)], {UNAUTHORIZED: unauthorized})
    return {
        Access.OPEN: Guard(),
        Access.KEY: keyed,
        Access.METRICS: keyed if settings.metrics_require_key else Guard(),
    }
