import os
import subprocess
import sys
from pathlib import Path

import pytest

from eurosat.sample import write_sample

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--model", "resnet10t", "--batch-size", "16", "--workers", "0"]


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """Every test and every process it starts caches decoded arrays in a private folder."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["EUROSAT_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """540 synthetic 13-band TIFFs in the official layout (2% of the official class sizes)."""
    path = tmp_path_factory.mktemp("sample") / "eurosat"
    write_sample(path, fraction=0.02)
    return path


def run(*args, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    """A real process, as a user starts it, from the repository root."""
    result = subprocess.run([str(a) for a in args], cwd=REPO, capture_output=True, text=True, timeout=300, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def run_project(project: str, *args, **kwargs) -> subprocess.CompletedProcess:
    return run(sys.executable, REPO / "projects" / project / "train.py", *args, **kwargs)


def single_run_dir(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]
