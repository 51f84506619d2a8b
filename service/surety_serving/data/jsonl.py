"""JSON-lines files of records, shared by the datasets: written atomically, read with the line
number of the first bad record in the error."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

Record = TypeVar("Record")


def write_records(path: Path, records: Iterable[dict[str, Any]]) -> int:
    """Write one JSON object a line, through a temporary file renamed into place (a reader never
    sees half a file); returns the number written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    count = 0
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            count += 1
    tmp.replace(path)
    return count


def read_records(
    path: Path, parse: Callable[[dict[str, Any]], Record], fields: str
) -> list[Record]:
    """``parse`` of every line's object (blank lines are skipped); ValueError names the file,
    the line and the ``fields`` a record must have."""
    records = []
    with Path(path).open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(parse(json.loads(line)))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"{path}:{number}: not a {{{fields}}} record: {exc}") from exc
    return records


def _object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"expected a JSON object, got {type(value).__name__}")
    return value


def read_objects(path: Path) -> list[dict[str, Any]]:
    """Every line's JSON object, as it is (blank lines are skipped)."""
    return read_records(path, _object, "JSON object")


#: Beside a data set's JSONL files: the parameters they were made with and their counts.
MANIFEST = "manifest.json"


def cached_counts(
    folder: Path, parameters: dict[str, Any], files: Iterable[Path]
) -> dict[str, Any] | None:
    """The counts of the files in ``folder`` if they were written with these ``parameters``
    and every one is there; None when they must be made (again)."""
    path = folder / MANIFEST
    if not path.is_file() or not all(file.is_file() for file in files):
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("parameters") != parameters:
        return None
    counts: dict[str, Any] = manifest["counts"]
    return counts


def write_manifest(folder: Path, parameters: dict[str, Any], counts: dict[str, Any]) -> None:
    """Record the parameters and counts of the files just written in ``folder``; written last,
    so that files without their manifest are made again."""
    (folder / MANIFEST).write_text(
        json.dumps({"parameters": parameters, "counts": counts}, indent=2) + "\n",
        encoding="utf-8",
    )
