import os
import shutil
import sys
from pathlib import Path

import pytest
import torch

from eurosat.sample import write_sample


def pytest_configure(config):
    """Under pytest-xdist (make test, make test-all) each worker, and every process its tests start, uses its share
    of the cores: N workers each running torch on every core would oversubscribe them, and OpenMP's threads then
    wait on each other. A set OMP_NUM_THREADS is left as it is."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        threads = max(1, len(os.sched_getaffinity(0)) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        torch.set_num_threads(threads)


@pytest.hookimpl(trylast=True)  # after pytest-xdist's, which appends each grouped test's group to its id
def pytest_collection_modifyitems(config, items):
    """Tests that share something (a compose project, a folder of this repository, a trained run) are grouped onto
    one pytest-xdist worker (--dist loadgroup). A pytest that drops the groups (pytest 9.2: pytest-xdist#1386)
    would let them collide: stop instead."""
    if getattr(config.option, "loadgroup", False):  # set in the workers of --dist loadgroup
        lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:
            # (a worker's exit reaches the terminal as xdist's INTERNALERROR: say why first)
            print(f"error: pytest-xdist lost the group of {lost[0]} (pytest 9.2: pytest-xdist#1386): run make venv to "
                  "install requirements.lock's pytest", file=sys.__stderr__)  # fmt: skip
            pytest.exit("pytest-xdist lost the test groups", 3)


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """Every test and every process it starts caches decoded arrays in a private folder."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["EUROSAT_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session", autouse=True)
def weights_lock(tmp_path_factory):
    """A run that records a model's weights writes a copy of weights.lock, never the working tree's."""
    path = tmp_path_factory.mktemp("weights") / "weights.lock"
    shutil.copy(Path(__file__).resolve().parents[1] / "weights.lock", path)
    os.environ["EUROSAT_WEIGHTS_LOCK"] = str(path)
    return path


@pytest.fixture(scope="session")
def built_images() -> dict:
    """Every image built by make on stand-in bases (tests/images only; needs a Docker engine)."""
    from engine import build_all

    return build_all()


@pytest.fixture(scope="session")
def sample_dir(tmp_path_factory) -> Path:
    """540 synthetic 13-band TIFFs in the official layout (2% of the official class sizes)."""
    path = tmp_path_factory.mktemp("sample") / "eurosat"
    write_sample(path, fraction=0.02)
    return path
