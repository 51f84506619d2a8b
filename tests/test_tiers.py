"""The test tiers (tests/tiers.py): every module names one, and a collection that breaks the rules
fails before any test runs."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

from tests.tiers import TIERS

pytestmark = pytest.mark.unit

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent

# The inner runs use the project's own hooks, from a conftest that imports them.
CONFTEST = "from tests.conftest import pytest_collection_modifyitems, pytest_configure\n"


def module_tiers(path: Path) -> set[str]:
    """The tiers named by a module's top-level ``pytestmark`` (one marker or a list)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "pytestmark" for target in node.targets
        ):
            for sub in ast.walk(node.value):
                if isinstance(sub, ast.Attribute) and sub.attr in TIERS:
                    names.add(sub.attr)
    return names


@pytest.mark.parametrize(
    "path", sorted(TESTS.rglob("test_*.py")), ids=lambda path: str(path.relative_to(ROOT))
)
def test_every_test_module_names_exactly_one_tier(path: Path) -> None:
    assert len(module_tiers(path)) == 1, (
        f"{path}: pytestmark names {module_tiers(path) or 'no tier'}"
    )


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A scratch test folder with the project's hooks, run in a process of its own."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")  # seconds of imports saved
    pytester.makeconftest(CONFTEST)
    return pytester


def test_a_module_without_a_tier_fails_collection(inner: pytest.Pytester) -> None:
    inner.makepyfile(test_plain="def test_one():\n    pass\n")
    result = inner.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*test_plain.py::test_one: no tier*"])


def test_a_unit_test_may_not_reach_a_model_fixture(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_reach="""
import pytest
from tests.tiers import model_fixture

pytestmark = pytest.mark.unit

@model_fixture()
def trained():
    return 1

@pytest.fixture
def through(trained):
    return trained

def test_direct(trained):
    pass

def test_indirect(through):
    pass

@pytest.mark.model
def test_declared(through):
    pass
"""
    )
    result = inner.runpytest_subprocess()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        [
            "*test_direct: marked unit but uses model fixtures *'trained'*",
            "*test_indirect: marked unit but uses model fixtures *'trained'*",
        ]
    )
    assert "test_declared" not in result.stderr.str()


def test_a_test_takes_the_highest_tier_it_carries(inner: pytest.Pytester) -> None:
    inner.makepyfile(
        test_mixed="""
import pytest

pytestmark = pytest.mark.unit

def test_fast():
    pass

@pytest.mark.network
def test_fetches():
    pass

@pytest.mark.slow
def test_long():
    pass
"""
    )
    check = inner.runpytest_subprocess("-m", "(unit or model) and not (network or image or slow)")
    check.assert_outcomes(passed=1, deselected=2)
    everything = inner.runpytest_subprocess()
    everything.assert_outcomes(passed=3)
