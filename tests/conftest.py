import os
from pathlib import Path

import pytest

from eurosat.sample import write_sample


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory):
    """Every test and every process it starts caches decoded arrays in a private folder."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["EUROSAT_CACHE_DIR"] = str(path)
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
