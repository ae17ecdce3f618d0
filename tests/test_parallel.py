"""make test, make test-all and make test-images run on pytest-xdist workers, with the tests that share something
grouped onto one worker (--dist loadgroup): the grouping holds with requirements.lock's pytest, and a pytest that
drops it (pytest 9.2, pytest-xdist#1386) stops the run with one line instead of letting grouped tests collide."""

import subprocess
import sys
import textwrap

import pytest
from helpers import REPO

pytestmark = pytest.mark.slow

GROUPED = """
import os
import pytest

@pytest.mark.xdist_group("shared")
@pytest.mark.parametrize("n", range(4))
def test_grouped(n):
    print(f"ran on {os.environ['PYTEST_XDIST_WORKER']}")
"""
# tests/conftest.py's hooks in a suite of its own (imported under another name: this folder has its own conftest)
CONFTEST = f"""
import importlib.util
spec = importlib.util.spec_from_file_location("repository_conftest", {str(REPO / "tests" / "conftest.py")!r})
repository_conftest = importlib.util.module_from_spec(spec)
spec.loader.exec_module(repository_conftest)
pytest_collection_modifyitems = repository_conftest.pytest_collection_modifyitems
"""
# what pytest 9.2 does: a test's id ignores the group pytest-xdist appends to it
PYTEST_9_2 = """
import _pytest.nodes
_pytest.nodes.Node.nodeid = property(lambda self: self._nodeid.split("@")[0])
"""


def run_grouped(root, conftest: str):
    (root / "test_grouped.py").write_text(GROUPED)
    (root / "conftest.py").write_text(conftest)
    (root / "pytest.ini").write_text("[pytest]\n")
    command = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadgroup", "-p", "no:cacheprovider", "-rA", root]
    return subprocess.run([str(c) for c in command], cwd=root, capture_output=True, text=True, timeout=300)


def test_grouped_tests_run_on_one_worker(tmp_path):
    result = run_grouped(tmp_path, CONFTEST)
    assert result.returncode == 0, result.stdout + result.stderr
    workers = {line.split()[-1] for line in result.stdout.splitlines() if line.startswith("ran on gw")}
    assert len(workers) == 1 and "4 passed" in result.stdout


def test_lost_groups_stop_the_run_with_one_line(tmp_path):
    result = run_grouped(tmp_path, CONFTEST + textwrap.dedent(PYTEST_9_2))
    assert result.returncode != 0 and "passed" not in result.stdout
    assert "error: pytest-xdist lost the group of test_grouped.py::test_grouped[" in result.stderr
