"""Response helpers shared by the routers: orjson bodies and the documented error answers."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Response

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": text, "content": {"application/json": {"example": {"error": "..."}}}}
    for status, text in (
        (400, "malformed or invalid input"),
        (404, "unknown model or version"),
        (409, "the model has no uncertainty artifacts (run surety calibrate)"),
        (413, "body too large"),
        (429, "queue full (Retry-After)"),
        (503, "not ready (Retry-After)"),
    )
}


class OrjsonResponse(Response):
    """JSON rendered by orjson (numpy arrays included)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Serialise ``content``."""
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
