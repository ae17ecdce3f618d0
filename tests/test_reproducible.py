"""--deterministic: two runs with the same data, config and seed repeat to the bit on the CPU."""

import hashlib
import json

import pytest
from helpers import MODEL, PROJECTS, SMALL, read_metrics, run_project, single_run_dir, weights, without_timings

pytestmark = pytest.mark.slow


def weights_sha256(checkpoint) -> str:
    state = weights(checkpoint)
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + state[name].cpu().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize("project", PROJECTS)
def test_deterministic_runs_repeat_to_the_bit(project, sample_dir, tmp_path):
    runs = []
    for name in ("first", "second"):
        run_project(
            project,
            "train",
            "--data",
            sample_dir,
            "--out",
            tmp_path / name,
            "--epochs",
            "1",
            "--model",
            MODEL,
            "--batch-size",
            "32",
            "--deterministic",
        )
        runs.append(single_run_dir(tmp_path / name))
    first, second = runs
    assert without_timings(read_metrics(first)) == without_timings(read_metrics(second))
    assert weights_sha256(first / "last.ckpt") == weights_sha256(second / "last.ckpt")
    for run_dir in runs:
        assert json.loads((run_dir / "provenance.json").read_text())["deterministic_algorithms"] is True
        assert json.loads((run_dir / "config.json").read_text())["deterministic"] is True


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
