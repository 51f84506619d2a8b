"""The test tiers (tests/tiers.py): their markers, and a collection that refuses a test without
one."""

from __future__ import annotations

import pytest

from tests.tiers import SLOW, TIERS, tier_problems

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    for name, help_text in {**TIERS, "slow": SLOW}.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects: every collected test is checked
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    problems = tier_problems(items)
    if problems:
        raise pytest.UsageError("tests without a valid tier:\n  " + "\n  ".join(problems))
