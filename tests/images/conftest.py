from pathlib import Path

import pytest

HERE = Path(__file__).parent


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own, which reads the groups
def pytest_collection_modifyitems(items):
    """make test-images spreads the modules over pytest-xdist workers by group: the Slurm cluster (a compose project
    of its own) and the NGC re-solves (images of their own names) each run beside the rest, which share the
    `eurosat` compose project and the images' tags, and so run on one worker, in order."""
    for item in items:
        if item.path.parent == HERE and not item.get_closest_marker("xdist_group"):
            item.add_marker(pytest.mark.xdist_group("engine"))
