"""Request bodies of real data for the default models, in the three shapes their users want.

- JSON-ready dicts for httpx and the tests (:func:`image_request`);
- JSON text and binary-extension bodies for locust (:func:`digits_json`, :func:`digits_binary`,
  :func:`fortune_json`), from a random place in the data;
- complete pre-serialised HTTP requests for the load generators (:func:`model_requests`).

Digits are scikit-learn's bundled 8×8 set. Fortunes are the test split of the fortunes corpus,
shuffled once with a fixed seed so that lengths vary from one request to the next: prepared on
demand (``prepare=True``, as the build does), or when it is already prepared on this machine
(``make run`` does it, under ``data/fortunes`` or ``$SURETY_FORTUNES_DIR``); otherwise a few
texts written for the purpose stand in, so load profiles also run where no model was built.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np
import orjson
from sklearn.datasets import load_digits

from surety_kit.wire import Endpoint, http_request

DIGITS = "digits"
FORTUNE_TOPICS = "fortune-topics"
MODELS = (DIGITS, FORTUNE_TOPICS)
JSON = {"Content-Type": "application/json"}

#: Where the random bodies start in the data: seeded, so a run repeats.
RANDOM = random.Random(0)

#: Stand-ins for the fortunes corpus, a few per topic of fortune-topics, of varied lengths.
SAMPLE_TEXTS = (
    "The compiler accepted the program at last, and then the linker found the real mistakes.",
    "Every kernel upgrade fixes one driver and breaks the sound card you forgot you had.",
    "A politician thinks of the next election; a statesman, of the next generation.",
    "The experiment was repeated three times, and the result was different each time.",
    "The court held that the contract was void, and the lawyers' fees were not.",
    "Education is what remains after one has forgotten everything one learned in school.",
    "There is no sincerer love than the love of food, and no quicker way to lose a diet.",
    "The home team lost in extra time, as the home team always does when you are watching.",
    "Love is an ocean of emotions entirely surrounded by expenses.",
    "The doctor said the patient would recover, and the bill said the doctor would too.",
    "Captain, the sensors show a vessel of unknown design approaching at warp six.",
    "In the beginning the network was small, and every host knew every other by name.",
)

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Data


#: Loaded on import, not in a load test's first request: under locust, that request would
#: stall every user of the process while scikit-learn loads.
IMAGES: np.ndarray = load_digits().data.astype(np.float32)


def digit_images() -> np.ndarray:
    """scikit-learn's digits, float32 [1797, 64], grey levels 0..16."""
    return IMAGES


@cache
def fortune_texts(*, prepare: bool = False) -> tuple[str, ...]:
    """The fortunes test split, shuffled with seed 0: prepared first when ``prepare``; else
    when already prepared here, or :data:`SAMPLE_TEXTS` in its place."""
    # Imported here: the service package is only needed for the real corpus.
    from surety_serving.data.fortunes import default_cache_dir, prepare_fortunes, read_jsonl

    if prepare:
        split = prepare_fortunes(log=lambda _: None).test
    else:
        split = default_cache_dir() / "splits" / "seed-0" / "test.jsonl"
        if not split.is_file():
            log.warning("%s not prepared: using %d sample texts", split, len(SAMPLE_TEXTS))
            return SAMPLE_TEXTS
    texts = [example.text for example in read_jsonl(split)]
    random.Random(0).shuffle(texts)
    return tuple(texts)


# --------------------------------------------------------------------------------------------
# Tensors and bodies


def digits_tensor(images: np.ndarray) -> dict[str, Any]:
    """The digits model's ``image`` input for a batch [N, 64] (data as an array: orjson with
    OPT_SERIALIZE_NUMPY writes it; see :func:`image_request` for plain JSON)."""
    batch = np.asarray(images, dtype=np.float32).reshape(-1, 64)
    return {"name": "image", "shape": list(batch.shape), "datatype": "FP32", "data": batch.ravel()}


def text_tensor(texts: Sequence[str]) -> dict[str, Any]:
    """A text model's ``text`` BYTES input for a batch of texts."""
    return {"name": "text", "shape": [len(texts)], "datatype": "BYTES", "data": list(texts)}


def image_request(images: np.ndarray, **extra: object) -> dict[str, Any]:
    """An OIP request for the digits model of ``images`` as they are shaped, JSON-ready (httpx's
    ``json=``)."""
    tensor = {
        "name": "image",
        "shape": list(images.shape),
        "datatype": "FP32",
        "data": images.ravel().tolist(),
    }
    return {"inputs": [tensor], **extra}


def _dumps(request: Mapping[str, Any]) -> bytes:
    return orjson.dumps(request, option=orjson.OPT_SERIALIZE_NUMPY)


def digits_json(rows: int, **extra: object) -> str:
    """An OIP JSON request of ``rows`` consecutive real digits from a random place."""
    images = digit_images()
    start = RANDOM.randrange(len(images) - rows)
    return _dumps({"inputs": [digits_tensor(images[start : start + rows])], **extra}).decode()


def digits_binary(rows: int) -> tuple[bytes, dict[str, str]]:
    """The same request in the binary tensor extension, probabilities returned binary: the body
    and its headers."""
    images = digit_images()
    start = RANDOM.randrange(len(images) - rows)
    blob = images[start : start + rows].tobytes()
    tensor = digits_tensor(images[start : start + rows])
    del tensor["data"]
    header = _dumps(
        {
            "inputs": [tensor | {"parameters": {"binary_data_size": len(blob)}}],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    )
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + blob, headers


def fortune_json(rows: int, **extra: object) -> str:
    """An OIP JSON request of ``rows`` fortune texts from a random place."""
    texts = fortune_texts()
    start = RANDOM.randrange(len(texts) - rows + 1)
    return _dumps({"inputs": [text_tensor(texts[start : start + rows])], **extra}).decode()


# --------------------------------------------------------------------------------------------
# Complete HTTP requests, batch 1, for the load generators


def oip_body(
    tensor: Mapping[str, Any],
    timeout_ms: int | None = None,
    outputs: Sequence[str] | None = None,
) -> bytes:
    """An OIP request body with one input tensor and, if given, a deadline parameter and the
    outputs wanted."""
    request: dict[str, Any] = {"inputs": [tensor]}
    if outputs is not None:
        request["outputs"] = [{"name": name} for name in outputs]
    if timeout_ms is not None:
        request["parameters"] = {"timeout_ms": timeout_ms}
    return _dumps(request)


def digits_requests(
    endpoint: Endpoint,
    *,
    count: int = 512,
    route: str = "score",
    timeout_ms: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[bytes]:
    """Batch-1 requests of the first ``count`` real digits to ``/v2/models/digits/<route>``."""
    path = f"/v2/models/{DIGITS}/{route}"
    return [
        http_request(endpoint, "POST", path, oip_body(digits_tensor(image), timeout_ms), headers)
        for image in digit_images()[:count]
    ]


def fortune_requests(
    endpoint: Endpoint,
    *,
    timeout_ms: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[bytes]:
    """Batch-1 ``/score`` requests of the fortunes test split (prepared when missing)."""
    path = f"/v2/models/{FORTUNE_TOPICS}/score"
    return [
        http_request(endpoint, "POST", path, oip_body(text_tensor([text]), timeout_ms), headers)
        for text in fortune_texts(prepare=True)
    ]


def model_requests(
    endpoint: Endpoint,
    model: str,
    *,
    timeout_ms: int | None = None,
    headers: Mapping[str, str] | None = None,
) -> list[bytes]:
    """Pre-built ``/score`` requests for one of the default models."""
    if model == DIGITS:
        return digits_requests(endpoint, timeout_ms=timeout_ms, headers=headers)
    if model == FORTUNE_TOPICS:
        return fortune_requests(endpoint, timeout_ms=timeout_ms, headers=headers)
    raise ValueError(f"no payloads for model {model!r} (known: {', '.join(MODELS)})")
