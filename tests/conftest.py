import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from eurosat.sample import write_sample

REPO = Path(__file__).resolve().parents[1]
SMALL = ["--model", "resnet10t", "--batch-size", "16"]
# 540 sample images with a 25% validation share: 135, odd, so a padding sampler on 2 ranks would count 136
DDP_ARGS = ["--epochs", "1", "--batch-size", "32", "--model", "resnet10t", "--val-fraction", "0.25"]


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


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds")} for r in history]


def check_resume_equals_uninterrupted(project: str, full_dir: Path, data: Path, out: Path, weights: str) -> None:
    """Train 1 epoch, resume to 2: metrics and the weights (checkpoint[weights]) equal the 2-epoch run's."""
    run_project(project, "train", "--data", data, "--out", out, "--epochs", "1", *SMALL)
    half_dir = single_run_dir(out)
    result = run_project(project, "train", "--resume", half_dir, "--epochs", "2")
    assert "Epoch 2/2" in result.stdout and "Epoch 1/2" not in result.stdout  # continued at the next epoch
    assert without_timings(read_metrics(half_dir)) == without_timings(read_metrics(full_dir))
    resumed = torch.load(half_dir / "last.ckpt", weights_only=False)[weights]
    uninterrupted = torch.load(full_dir / "last.ckpt", weights_only=False)[weights]
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)
    provenance = json.loads((half_dir / "provenance.json").read_text())
    assert "--resume" not in provenance["command"] and len(provenance["resumes"]) == 1  # the first start is kept
    assert "--resume" in provenance["resumes"][0]["command"]


def check_evaluate_and_predict(project: str, run_dir: Path, data: Path) -> None:
    """evaluate reproduces the recorded best val_acc; predict names the right class for most files."""
    best = json.loads((run_dir / "metrics.json").read_text())["best"]
    result = run_project(project, "evaluate", run_dir / "best.ckpt")
    assert f"val_acc {best['val_acc']:.4f} on 108 validation images" in result.stdout
    files = [data / name / f"{name}_{n}.tif" for name in ("Forest", "River", "SeaLake") for n in (1, 2, 3, 4)]
    lines = [line.split("\t") for line in run_project(project, "predict", run_dir / "best.ckpt", *files).stdout.splitlines()]
    assert [line[0] for line in lines] == [str(f) for f in files]
    assert all(0 < float(p) <= 1 for _, _, p in lines)
    correct = sum(f.parent.name == label for f, (_, label, _) in zip(files, lines, strict=True))
    assert correct >= 8  # of 12; chance is about 1


def check_two_process_run(result: subprocess.CompletedProcess, out: Path) -> None:
    """Both processes wrote one run directory, counted every validation image once, printed once."""
    run_dir = single_run_dir(out)
    (record,) = read_metrics(run_dir)
    assert record["val_samples"] == 135
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    assert result.stdout.count("Epoch 1/1 loss") == 1  # rank 0 prints, rank 1 does not
