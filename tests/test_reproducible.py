"""--resume from damaged checkpoints: the previous one when the last is corrupt, else one clear line.

(--deterministic runs repeating to the bit: tests/test_reproduce.py, a run and its make reproduce rerun.)"""

import pytest
from helpers import PROJECTS, SMALL, read_metrics, run_project, single_run_dir

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("project", PROJECTS)
def test_resume_falls_back_to_the_previous_checkpoint_when_the_last_is_corrupt(project, sample_dir, tmp_path):
    run_project(project, "train", "--data", sample_dir, "--out", tmp_path, "--epochs", "2", *SMALL)
    run_dir = single_run_dir(tmp_path)
    last = run_dir / "last.ckpt"
    assert (run_dir / "last.prev.ckpt").is_file()  # the epoch-1 checkpoint, kept when epoch 2's was written
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a crash mid-copy, a full disk...
    result = run_project(project, "train", "--resume", run_dir, "--epochs", "3")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(last) in warnings[0] and "last.prev.ckpt" in warnings[0]
    assert "Epoch 2/3" in result.stdout and "Epoch 3/3" in result.stdout  # epoch 2 is trained again
    assert [r["epoch"] for r in read_metrics(run_dir)] == [1, 2, 3]  # no duplicated or missing epoch line


@pytest.mark.parametrize("project", PROJECTS)
def test_a_corrupt_checkpoint_without_a_previous_one_is_one_clear_line(project, tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"PK\x03\x04 truncated")
    result = run_project(project, "train", "--resume", tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().startswith(f"error: cannot load checkpoint {tmp_path / 'last.ckpt'}")
