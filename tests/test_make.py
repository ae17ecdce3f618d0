"""The Makefile as a newcomer uses it."""

import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from helpers import MODEL, PROJECTS, REPO, run

needs_venv = pytest.mark.skipif(not (REPO / ".venv" / ".installed").exists(), reason="make venv has not run here")


def test_help_lists_every_target_with_one_line():
    result = run("make", "help")
    targets = set(re.findall(r"^\S*?(\S+)\s{2,}\S", re.sub(r"\x1b\[[0-9;]*m", "", result.stdout), re.M))
    expected = {
        "help",
        "venv",
        "train",
        "data",
        "data-sample",
        "lock",
        "lock-check",
        "lock-drift",
        "lint",
        "test",
        "test-all",
        "new-project",
        "clean",
        "test-images",
        "images",
        "image-%",
        "image-ngc",
        "lock-images",
        "pin",
        "push",
        "shell",
        "notebook",
        "execute",
        "down",
    }
    assert expected <= targets, targets
    assert f"Projects: {' '.join(PROJECTS)}" in result.stdout


def test_unknown_project_lists_the_valid_ones():
    result = run("make", "train", "PROJECT=nope", check=False)
    assert result.returncode != 0
    assert (
        result.stderr.splitlines()[0]
        == f"error: unknown project 'nope': no projects/nope/project.toml; projects: {', '.join(PROJECTS)}"
    )


@needs_venv
def test_train_without_data_says_how_to_get_it(tmp_path):
    result = run("make", "train", "RUNNER=local", f"DATA={tmp_path / 'none'}", check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "make data" in result.stderr and "make data-sample" in result.stderr


@needs_venv
def test_make_data_sample_then_train(tmp_path):
    data = tmp_path / "eurosat"
    run("make", "data-sample", f"DATA={data}")
    result = run(
        "make",
        "train",
        "RUNNER=local",
        "PROJECT=eurosat-lightning",
        f"DATA={data}",
        f"ARGS=--epochs 1 --model {MODEL} --batch-size 64 --no-pretrained --out {tmp_path / 'runs'}",
    )
    assert "Epoch 1/1 loss" in result.stdout
    assert list((tmp_path / "runs").glob("*/last.ckpt"))


@needs_venv
def test_make_venv_byte_compiles_every_package():
    """Bytecode for the packages' modules, not only for those something has imported (the tests import a few):
    a process never compiles torch at start-up, even where PYTHONDONTWRITEBYTECODE keeps it from saving that."""
    (site,) = (REPO / ".venv" / "lib").glob("python3.*/site-packages")
    sources = [path for path in site.rglob("*.py") if "/pip/" not in str(path)]  # (pip came with the venv)
    missing = [path for path in sources if not Path(importlib.util.cache_from_source(str(path))).is_file()]
    assert len(sources) > 10_000 and len(missing) < 0.001 * len(sources), missing[:10]


@needs_venv
def test_lock_check_passes_on_the_committed_lock():
    assert "matches" in run("make", "lock-check").stdout


def test_lock_check_fails_when_the_input_changes(tmp_path):
    shutil.copy(REPO / "requirements.lock", tmp_path / "requirements.lock")
    source = tmp_path / "requirements.in"
    source.write_text((REPO / "requirements.in").read_text() + "pyfiglet\n")
    result = run(sys.executable, REPO / "scripts" / "lock.py", "check", source, tmp_path / "requirements.lock", check=False)
    assert result.returncode == 1
    assert "changed since" in result.stderr and "pyfiglet is in" in result.stderr and "make lock" in result.stderr

    source.write_text((REPO / "requirements.in").read_text().replace("torch==2.14.1", "torch==2.13.0"))
    result = run(sys.executable, REPO / "scripts" / "lock.py", "check", source, tmp_path / "requirements.lock", check=False)
    assert "pins torch==2.14.1" in result.stderr


def test_every_runner_gets_one_decoded_image_cache_by_default():
    """RUNNER=local reads EUROSAT_CACHE_DIR, compose mounts CACHE_DIR at /cache: by default both are .cache/eurosat."""
    env = {key: value for key, value in os.environ.items() if key not in ("EUROSAT_CACHE_DIR", "CACHE_DIR")}
    show = 'show-cache: ; @echo "$$EUROSAT_CACHE_DIR $(abspath $(CACHE_DIR))"'
    result = run("make", "--eval", show, "show-cache", env=env)
    assert result.stdout.split() == [str(REPO / ".cache" / "eurosat")] * 2
    result = run("make", "--eval", show, "show-cache", "CACHE_DIR=/scratch/cache", env=env)
    assert result.stdout.split() == ["/scratch/cache"] * 2
