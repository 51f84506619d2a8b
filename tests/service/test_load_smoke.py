"""A headless locust smoke run (8 users, 15 s) against the real server: no request may fail."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

LOCUSTFILE = Path(__file__).resolve().parents[2] / "load_tests" / "locustfile.py"


@pytest.mark.slow
def test_locust_smoke_has_no_errors(server, tmp_path):
    prefix = tmp_path / "smoke"
    result = subprocess.run(
        [
            *(sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless"),
            *("-u", "8", "-r", "8", "-t", "15s", "-H", server, "--only-summary"),
            *("--exit-code-on-error", "1", "--csv", str(prefix)),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with (tmp_path / "smoke_stats.csv").open() as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    total = rows["Aggregated"]
    assert int(total["Request Count"]) > 100
    assert int(total["Failure Count"]) == 0
    assert {"infer [1]", "score [1-4]", "infer binary [8]"} <= set(rows)
