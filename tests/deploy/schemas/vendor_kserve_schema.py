"""Vendor the InferenceService schema from KServe's CRD, for tests/deploy/test_manifests.py.

The tests run offline, and no PyPI package ships KServe's CRDs (the ``kserve`` SDK carries
Python models of the types, not their OpenAPI schema), so the schema is kept here: the
``openAPIV3Schema`` of ``serving.kserve.io/v1beta1`` from KServe's released CRD, with the
``description`` texts removed (three quarters of its size, no part of validation), written as
gzipped JSON with sorted keys and a fixed timestamp so that the same CRD gives the same bytes.

    # in a clone of github.com/kserve/kserve:
    git show v0.20.0:config/crd/full/serving.kserve.io_inferenceservices.yaml > isvc-crd.yaml
    .venv/bin/python tests/deploy/schemas/vendor_kserve_schema.py isvc-crd.yaml

Then update the release, commit and checksum in tests/deploy/schemas/README.md.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import yaml

OUTPUT = Path(__file__).resolve().parent / "kserve-inferenceservice-v1beta1.json.gz"
VERSION = "v1beta1"


def strip_descriptions(node: Any) -> Any:
    """The schema without ``description`` keys (a property *named* description is kept)."""
    if isinstance(node, dict):
        kept = {}
        for key, value in node.items():
            if key == "properties":
                kept[key] = {name: strip_descriptions(child) for name, child in value.items()}
            elif key != "description":
                kept[key] = strip_descriptions(value)
        return kept
    if isinstance(node, list):
        return [strip_descriptions(item) for item in node]
    return node


def extract(crd: dict[str, Any], version: str = VERSION) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of ``version`` in a CustomResourceDefinition."""
    for served in crd["spec"]["versions"]:
        if served["name"] == version:
            schema: dict[str, Any] = served["schema"]["openAPIV3Schema"]
            return schema
    raise SystemExit(f"the CRD has no version {version!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("crd", type=Path, help="serving.kserve.io_inferenceservices.yaml")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    raw = args.crd.read_bytes()
    crd = yaml.safe_load(raw)
    if crd.get("kind") != "CustomResourceDefinition" or crd["spec"]["group"] != "serving.kserve.io":
        raise SystemExit(f"{args.crd}: not KServe's InferenceService CRD")
    schema = strip_descriptions(extract(crd))
    text = json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()
    args.output.write_bytes(gzip.compress(text, compresslevel=9, mtime=0))
    print(
        f"{args.output}: {len(text)} bytes of JSON; source sha256 {hashlib.sha256(raw).hexdigest()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
