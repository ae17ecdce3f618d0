"""The images, built by make on stand-in root bases and checked with real containers."""

import hashlib
import json
import os
import shutil
import subprocess
import time

import pytest
from conftest import REPO
from engine import IMAGES, STANDIN_NGC, docker, image_id, make

PACKAGES = {
    "cuda-base": ["torch", "torchvision"],
    "torch-ngc": ["torch", "torchvision", "timm", "skimage", "sklearn", "tifffile", "tensorboard", "tqdm"],
    "lightning": ["timm", "skimage", "pytorch_lightning", "torchmetrics"],
    "jupyter": ["timm", "pytorch_lightning", "jupyterlab", "nbclient", "tensorboard"],
}


def run_in(image: str, *command: str) -> str:
    return docker("run", "--rm", f"eurosat/{image}:latest", *command).stdout.strip()


@pytest.mark.parametrize("image", IMAGES)
def test_packages_import_and_pip_check_passes(built_images, image):
    imports = "; ".join(f"import {name}" for name in PACKAGES[image])
    run_in(image, "python3", "-c", imports)
    assert "No broken requirements" in run_in(image, "python3", "-m", "pip", "check")


@pytest.mark.parametrize("image", ["torch-ngc", "lightning", "jupyter"])
def test_torch_is_the_base_images_own_build(built_images, image):
    probe = "import torch; print(torch.__version__, torch.__file__)"
    assert run_in(image, "python3", "-c", probe) == docker("run", "--rm", STANDIN_NGC, "python3", "-c", probe).stdout.strip()


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_the_non_root_user(built_images, image):
    uid, user, home = run_in(image, "sh", "-c", 'id -u; whoami; echo "$HOME"').split()
    assert uid != "0" and user == "app" and home == "/home/app"
    run_in(image, "sh", "-c", "touch $HOME/.cache/probe $HOME/probe")  # HOME and caches are writable


@pytest.mark.parametrize("image", IMAGES)
def test_labels(built_images, image):
    labels = json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", f"eurosat/{image}:latest").stdout)
    lock = (REPO / "images" / image / "requirements.lock").read_bytes()
    assert labels["io.github.eurosat.lock.sha256"] == hashlib.sha256(lock).hexdigest()
    assert len(labels["org.opencontainers.image.revision"]) == 40
    assert labels["org.opencontainers.image.base.digest"].startswith("sha256:")
    for key in ("source", "created", "base.name", "title"):
        assert labels[f"org.opencontainers.image.{key}"], key
    short_sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert image_id(image) == docker("image", "inspect", "--format", "{{.Id}}", f"eurosat/{image}:{short_sha}").stdout.strip()


@pytest.mark.parametrize(("project", "image"), [("eurosat-amp", "torch-ngc"), ("eurosat-lightning", "lightning")])
def test_make_train_in_a_container_writes_the_run_directory_on_the_host(built_images, project, image, sample_dir, tmp_path):
    out = f"runs/image-test-{project}-{int(time.time())}"
    try:
        result = make(
            "train",
            "RUNNER=docker",
            f"PROJECT={project}",
            f"DATA={sample_dir}",
            f"ARGS=--epochs 1 --model resnet10t --batch-size 32 --out {out}",
        )
        assert "containers run on the CPU" in result.stderr  # no GPU here: the GPU override is left out
        (run_dir,) = (REPO / out).iterdir()
        for name in ("config.json", "metrics.jsonl", "metrics.json", "last.ckpt", "best.ckpt", "provenance.json"):
            assert (run_dir / name).is_file(), name
            assert (run_dir / name).stat().st_uid == os.getuid()  # the host user's files
        provenance = json.loads((run_dir / "provenance.json").read_text())
        assert provenance["container"] == {"in_container": True, "image_id": image_id(image)}
        assert provenance["lockfile"]["path"] == f"/opt/eurosat/{image}.lock"
        assert len(provenance["git"]["commit"]) == 40
    finally:
        shutil.rmtree(REPO / out, ignore_errors=True)


def test_gpus_launches_torchrun_in_the_container(built_images, sample_dir):
    """GPUS=N starts N processes with torchrun (gloo on this CPU-only host); each image is counted once."""
    out = f"runs/image-test-torchrun-{int(time.time())}"
    try:
        make(
            "train",
            "RUNNER=docker",
            "PROJECT=eurosat-amp",
            "GPUS=2",
            f"DATA={sample_dir}",
            f"ARGS=--epochs 1 --model resnet10t --batch-size 32 --val-fraction 0.25 --out {out}",
        )
        (run_dir,) = (REPO / out).iterdir()
        assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
        (record,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert record["val_samples"] == 135
    finally:
        shutil.rmtree(REPO / out, ignore_errors=True)


def test_notebook_trains_inside_the_jupyter_image(built_images, sample_dir):
    make("execute", "NOTEBOOK=notebooks/train-eurosat-amp.ipynb", f"DATA={sample_dir}", timeout=900)
    newest = max((REPO / "runs" / "notebook").iterdir(), key=lambda p: p.stat().st_mtime)
    try:
        assert [json.loads(line)["epoch"] for line in (newest / "metrics.jsonl").read_text().splitlines()] == [1]
    finally:
        shutil.rmtree(newest)
