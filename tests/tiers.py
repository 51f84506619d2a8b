"""Test tiers: what a test needs, so that `make check` can leave out what is slow or external.

Every test module names one tier in ``pytestmark``; a test that needs more than its module names
its own tier too, and the highest tier it carries is its tier:

- ``unit``: no model is built or loaded, nothing leaves the machine; seconds.
- ``model``: builds (trains, exports) or loads a real model, or serves one.
- ``network``: fetches at test time (pip, deployment tools). The fortunes corpus is not a
  fetch at test time: `make data` (a step of `make check` and `make test`) fills its cache.
- ``image``: builds and runs the Docker image.

``slow`` is not a tier but a flag on top of one: long tests of any tier (load profiles, fuzzing,
big inputs). `make check` runs ``unit`` and ``model`` tests that are not ``slow``.

A fixture that builds or loads a model says so with :func:`model_fixture`; a ``unit`` test that
reaches one, directly or through other fixtures, is refused at collection.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

#: The tiers, cheapest first, with what each means (the marker's help text).
TIERS: dict[str, str] = {
    "unit": "no model built or loaded, no network; seconds",
    "model": "builds, loads or serves a real model",
    "network": "fetches at test time (apt-get download, pip, deployment tools)",
    "image": "builds and runs the Docker image",
}
SLOW = "long-running test of any tier (load profiles, fuzzing, big inputs); not in make check"

#: Names of the fixtures declared with :func:`model_fixture`.
MODEL_FIXTURES: set[str] = set()


def model_fixture(*args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
    """``pytest.fixture`` for a fixture that builds or loads a model: a ``unit`` test may not
    use it."""

    def declare(function: Callable[..., Any]) -> Any:
        MODEL_FIXTURES.add(kwargs.get("name", function.__name__))
        return pytest.fixture(*args, **kwargs)(function)

    return declare


def tier_of(item: pytest.Item) -> str | None:
    """The highest tier among the item's markers (its own and its module's), or None."""
    named = {marker.name for marker in item.iter_markers()}
    found = [tier for tier in TIERS if tier in named]
    return found[-1] if found else None


def tier_problems(items: list[pytest.Item]) -> list[str]:
    """Tests without a tier, and unit tests that reach a model fixture."""
    problems = []
    for item in items:
        tier = tier_of(item)
        if tier is None:
            problems.append(
                f"{item.nodeid}: no tier (pytestmark = pytest.mark.<tier> in its module)"
            )
        elif tier == "unit":
            models = sorted(MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())))
            if models:
                problems.append(f"{item.nodeid}: marked unit but uses model fixtures {models}")
    return problems
