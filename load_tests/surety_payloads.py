"""Request bodies for the locust profiles: real digits and real fortunes, no download.

Digits are scikit-learn's bundled set. Fortunes are the test split of the fortunes corpus when it
has been prepared on this machine (``make run`` or ``python -m surety_serving.data.fortunes`` does it,
under ``data/fortunes`` or ``$SURETY_FORTUNES_DIR``); otherwise a few texts written for these
profiles stand in, so the profiles also run from a machine that never built the models.
"""

from __future__ import annotations

import logging
import random
from functools import cache

import numpy as np
import orjson
from sklearn.datasets import load_digits

DIGITS = "digits"
FORTUNE_TOPICS = "fortune-topics"
JSON = {"Content-Type": "application/json"}

IMAGES = load_digits().data.astype(np.float32)
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


def digits_json(rows: int, **extra: object) -> str:
    """An OIP JSON request of ``rows`` consecutive real digits from a random place."""
    start = RANDOM.randrange(len(IMAGES) - rows)
    batch = IMAGES[start : start + rows]
    tensor = {"name": "image", "shape": [rows, 64], "datatype": "FP32", "data": batch.ravel()}
    return orjson.dumps({"inputs": [tensor], **extra}, option=orjson.OPT_SERIALIZE_NUMPY).decode()


def digits_binary(rows: int) -> tuple[bytes, dict[str, str]]:
    """The same request in the binary tensor extension, probabilities returned binary."""
    start = RANDOM.randrange(len(IMAGES) - rows)
    blob = IMAGES[start : start + rows].tobytes()
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "image",
                    "shape": [rows, 64],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(blob)},
                }
            ],
            "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}}],
        }
    )
    headers = {
        "Inference-Header-Content-Length": str(len(header)),
        "Content-Type": "application/octet-stream",
    }
    return header + blob, headers


@cache
def fortune_texts() -> tuple[str, ...]:
    """The fortunes test split when it is prepared here, else :data:`SAMPLE_TEXTS`."""
    # Imported here: the service package is only needed for the real corpus.
    from surety_serving.data.fortunes import default_cache_dir, read_jsonl

    split = default_cache_dir() / "splits" / "seed-0" / "test.jsonl"
    if not split.is_file():
        log.warning("%s not prepared: using %d sample texts", split, len(SAMPLE_TEXTS))
        return SAMPLE_TEXTS
    texts = [example.text for example in read_jsonl(split)]
    # Shuffled once, with a fixed seed: lengths vary from one request to the next.
    random.Random(0).shuffle(texts)
    return tuple(texts)


def fortune_json(rows: int, **extra: object) -> str:
    """An OIP JSON request of ``rows`` fortune texts (the ``text`` BYTES input)."""
    texts = fortune_texts()
    start = RANDOM.randrange(len(texts) - rows + 1)
    tensor = {
        "name": "text",
        "shape": [rows],
        "datatype": "BYTES",
        "data": texts[start : start + rows],
    }
    return orjson.dumps({"inputs": [tensor], **extra}).decode()
