"""A detector's parameters checked by name and type: when it is fitted, and when it is restored
from an artifact (then the error names the artifact's JSON file)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from surety_serving.uncertainty.base import ArtifactError


def checked(method: str, params: Mapping[str, Any], kinds: Mapping[str, type]) -> dict[str, Any]:
    """params checked to have exactly the names of `kinds`, each of its type (a list may come as
    a tuple); ValueError naming the method otherwise."""
    unknown, missing = sorted(set(params) - set(kinds)), sorted(set(kinds) - set(params))
    if unknown or missing:
        named = (("unknown", unknown), ("missing", missing))
        problems = [f"{what} parameters {names}" for what, names in named if names]
        raise ValueError(f"{method}: {', '.join(problems)}")
    settings = {}
    for name, kind in kinds.items():
        value = params[name]
        if kind is list and isinstance(value, tuple):
            value = list(value)
        # bool is an int subclass: True must not pass for k.
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise ValueError(f"{method}: parameter {name!r} must be {kind.__name__}, got {value!r}")
        settings[name] = value
    return settings


def checked_stored(
    method: str, params: Mapping[str, Any], kinds: Mapping[str, type], source: Path
) -> dict[str, Any]:
    """`checked` for a stored artifact: ArtifactError naming the JSON file the params came from."""
    try:
        return checked(method, params, kinds)
    except ValueError as exc:
        raise ArtifactError(f"{source.with_suffix('.json')}: {exc}") from exc
