"""--deterministic: two runs with the same data, config and seed repeat to the bit on the CPU."""

import hashlib
import json

import pytest
import torch
from conftest import read_metrics, run_project, single_run_dir, without_timings

pytestmark = pytest.mark.slow


def weights_sha256(checkpoint, key: str) -> str:
    state = torch.load(checkpoint, weights_only=False)[key]
    digest = hashlib.sha256()
    for name in sorted(state):
        digest.update(name.encode() + state[name].cpu().numpy().tobytes())
    return digest.hexdigest()


@pytest.mark.parametrize(("project", "weights"), [("eurosat-amp", "model"), ("eurosat-lightning", "state_dict")])
def test_deterministic_runs_repeat_to_the_bit(project, weights, sample_dir, tmp_path):
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
            "resnet10t",
            "--batch-size",
            "32",
            "--workers",
            "2",
            "--deterministic",
        )  # workers: their seeding counts too
        runs.append(single_run_dir(tmp_path / name))
    first, second = runs
    assert without_timings(read_metrics(first)) == without_timings(read_metrics(second))
    assert weights_sha256(first / "last.ckpt", weights) == weights_sha256(second / "last.ckpt", weights)
    for run_dir in runs:
        assert json.loads((run_dir / "provenance.json").read_text())["deterministic_algorithms"] is True
        assert json.loads((run_dir / "config.json").read_text())["deterministic"] is True
