"""The "floor" peer: the least a v2 JSON endpoint over FastAPI can do.

orjson parses the body, ``session.run`` runs it, orjson writes the v2 response: no validation,
no batching, no metrics. Configured by environment (``PEER_MODEL``, ``PEER_LIBRARY``,
``PEER_MODEL_NAME``); run with ``uvicorn bench.peers.floor:app --workers 1``. Two routes, as
the model asks:

- an image model (digits): ``POST /v2/models/<name>/infer``, every output back;
- a text model, when ``PEER_TOKENIZER`` names its ``tokenizer.json``: ``POST
  /v2/models/<name>/score``, the texts tokenized with ``tokenizers`` (truncated at
  ``PEER_MAX_LENGTH`` tokens, padded to the longest text of the request), every output run as
  Surety runs them, and Surety's three ``/score`` outputs back: ``probabilities``,
  ``predicted_index`` and ``predicted_label`` (labels from the ``PEER_LABELS`` file, one a line).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from fastapi import FastAPI, Request, Response
from peer_session import peer_session

NAME = os.environ.get("PEER_MODEL_NAME", "digits")
TOKENIZER = os.environ.get("PEER_TOKENIZER")


SESSION = peer_session()
OUTPUTS = [o.name for o in SESSION.get_outputs()]
app = FastAPI()


@app.get("/v2/health/ready")
def ready() -> dict[str, bool]:
    """Ready once imported: the session is built at import."""
    return {"ready": True}


def answer(outputs: list[dict[str, Any]]) -> Response:
    """The v2 response around ``outputs`` (numpy data serialized by orjson)."""
    body = {"model_name": NAME, "model_version": "1", "outputs": outputs}
    return Response(
        orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json"
    )


def tensor(name: str, datatype: str, value: np.ndarray) -> dict[str, Any]:
    """One v2 output: orjson writes numeric arrays as they are, strings from a list."""
    data = value.ravel()
    return {"name": name, "datatype": datatype, "shape": list(value.shape),
            "data": data.tolist() if datatype == "BYTES" else data}  # fmt: skip


def run(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every output of the graph, with the custom op's ``scale`` input at ones."""
    rows = next(iter(feeds.values())).shape[0]
    feeds["scale"] = np.ones((rows, 1), dtype=np.float32)
    return dict(zip(OUTPUTS, SESSION.run(None, feeds), strict=True))


if TOKENIZER is None:

    @app.post(f"/v2/models/{NAME}/infer")
    async def infer(request: Request) -> Response:
        """Parse with orjson, run, answer every output."""
        sent = orjson.loads(await request.body())["inputs"][0]
        image = np.asarray(sent["data"], dtype=np.float32).reshape(sent["shape"])
        results = run({"image": image})
        return answer([tensor(n, "FP32", r) for n, r in results.items()])

else:
    from tokenizers import Tokenizer

    TEXT = Tokenizer.from_file(TOKENIZER)
    TEXT.enable_truncation(max_length=int(os.environ["PEER_MAX_LENGTH"]))
    TEXT.enable_padding(pad_id=TEXT.token_to_id("[PAD]"), pad_token="[PAD]")  # to the longest
    LABELS = np.array(Path(os.environ["PEER_LABELS"]).read_text().splitlines(), dtype=object)

    @app.post(f"/v2/models/{NAME}/score")
    async def score(request: Request) -> Response:
        """Parse with orjson, tokenize, run, answer the probabilities, index and label."""
        texts = orjson.loads(await request.body())["inputs"][0]["data"]
        encodings = TEXT.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        probabilities = run({"input_ids": ids, "attention_mask": mask})["probabilities"]
        index = probabilities.argmax(axis=1)
        return answer(
            [
                tensor("probabilities", "FP32", probabilities),
                tensor("predicted_index", "INT64", index),
                tensor("predicted_label", "BYTES", LABELS[index]),
            ]
        )
