"""The "floor" peer: the least a v2 JSON infer endpoint over FastAPI can do.

orjson parses the body, ``session.run`` runs it, orjson writes the v2 response: no validation,
no batching, no metrics. Configured by environment (``PEER_MODEL``, ``PEER_LIBRARY``,
``PEER_MODEL_NAME``); run with ``uvicorn bench.peers.floor:app --workers 1``.
"""

from __future__ import annotations

import os

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from peer_session import peer_session

NAME = os.environ.get("PEER_MODEL_NAME", "digits")


SESSION = peer_session()
OUTPUTS = [o.name for o in SESSION.get_outputs()]
app = FastAPI()


@app.get("/v2/health/ready")
def ready() -> dict[str, bool]:
    """Ready once imported: the session is built at import."""
    return {"ready": True}


@app.post(f"/v2/models/{NAME}/infer")
async def infer(request: Request) -> Response:
    """Parse with orjson, run, answer; the custom op's ``scale`` input is ones."""
    tensor = orjson.loads(await request.body())["inputs"][0]
    image = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    scale = np.ones((image.shape[0], 1), dtype=np.float32)
    results = SESSION.run(None, {"image": image, "scale": scale})
    outputs = [
        {"name": n, "datatype": "FP32", "shape": list(r.shape), "data": r.ravel()}
        for n, r in zip(OUTPUTS, results, strict=True)
    ]
    body = {"model_name": NAME, "model_version": "1", "outputs": outputs}
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )
