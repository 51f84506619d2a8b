"""A headless locust smoke run (8 users, 15 s) against the real server: no request may fail."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.helpers import run_locust

pytestmark = pytest.mark.model

LOCUSTFILE = Path(__file__).resolve().parents[2] / "load_tests" / "locustfile.py"


@pytest.mark.slow
def test_locust_smoke_has_no_errors(server, tmp_path):
    _, rows = run_locust(
        LOCUSTFILE,
        server,
        tmp_path / "smoke",
        *("-u", "8", "-r", "8", "-t", "15s", "--exit-code-on-error", "1"),
    )
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 100
    assert int(total["Failure Count"]) == 0
    assert {"infer [1]", "score [1-4]", "infer binary [8]"} <= set(rows)
