"""--normalize articles|band-stats|imagenet: the statistics against a reference computed another way, carried by the
checkpoint into evaluate and predict; a choice the bands cannot take is one line."""

import json
import shutil

import numpy as np
import pytest
import tifffile
import timm
import torch
from helpers import PROJECTS, SMALL, main_in_process, run_project, single_run_dir

from eurosat.datasets import load_configured_splits
from eurosat.normalization import Standardize, band_statistics


def test_band_statistics_are_each_bands_mean_and_std_over_the_chosen_images():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 65535, size=(2500, 4, 5, 5), dtype=np.uint16)  # more than one chunk
    rows = rng.permutation(2500)[:2100]
    mean, std = band_statistics(images, rows, 65535.0)
    chosen = images[rows].astype(np.float64) / 65535.0
    assert mean == pytest.approx(chosen.mean(axis=(0, 2, 3)).tolist(), rel=1e-9)
    assert std == pytest.approx(chosen.std(axis=(0, 2, 3)).tolist(), rel=1e-9)
    constant = np.full((3, 2, 4, 4), 7, dtype=np.uint16)
    assert band_statistics(constant, np.arange(3), 1.0) == ([7.0, 7.0], [1.0, 1.0])  # centred, never divided by 0
    x = torch.rand(2, 2, 3, 3)
    assert torch.allclose(Standardize([0.5, 1.0], [2.0, 4.0])(x)[:, 1], (x[:, 1] - 1.0) / 4.0)


def saved_weights(run_dir) -> dict:
    checkpoint = torch.load(run_dir / "best.ckpt", weights_only=False)
    return checkpoint["model"] if "model" in checkpoint else {k[6:]: v for k, v in checkpoint["state_dict"].items()}


@pytest.mark.parametrize("project", PROJECTS)
@pytest.mark.parametrize("bands", ["rgb", "all"])
def test_band_stats_are_the_training_parts_in_the_checkpoint_and_evaluate_uses_them(project, bands, sample_dir, tmp_path):
    flags = ["--data", sample_dir, "--out", tmp_path, "--epochs", "1", "--bands", bands, "--normalize", "band-stats", *SMALL]
    main_in_process(project, "train", *flags)
    run_dir = single_run_dir(tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["scale"] == 65535.0  # the whole uint16 range: nothing is clipped
    data = load_configured_splits(config, progress=False)
    reference = data.train.images().astype(np.float64) / 65535.0  # the training part alone
    expected = reference.mean(axis=(0, 2, 3)), reference.std(axis=(0, 2, 3))
    assert config["normalization"]["mean"] == pytest.approx(expected[0].tolist(), rel=1e-6)
    weights = saved_weights(run_dir)
    assert torch.allclose(weights["normalize.mean"].flatten().double(), torch.from_numpy(expected[0]), rtol=1e-5)
    assert torch.allclose(weights["normalize.std"].flatten().double(), torch.from_numpy(expected[1]), rtol=1e-5)
    assert len(expected[0]) == (3 if bands == "rgb" else 13)

    best = json.loads((run_dir / "metrics.json").read_text())["best"]
    evaluated = main_in_process(project, "evaluate", run_dir / "best.ckpt", "--out", tmp_path / "evaluated").value
    # the same figures (Lightning's recorded val_loss differs from a re-evaluation by up to 0.3%, as without --normalize)
    assert evaluated["val_acc"] == pytest.approx(best["val_acc"]) and evaluated["val_loss"] == pytest.approx(
        best["val_loss"], rel=1e-2
    )
    tif = sample_dir / "Forest" / "Forest_1.tif"
    assert main_in_process(project, "predict", run_dir / "best.ckpt", tif).stdout.startswith(f"{tif}\t")


@pytest.mark.parametrize("project", PROJECTS)
def test_imagenet_takes_the_pretrained_weights_mean_and_std_and_the_articles_take_none(project, sample_dir, tmp_path):
    main_in_process(
        project, "train", "--data", sample_dir, "--out", tmp_path / "i", "--epochs", "1", "--normalize", "imagenet", *SMALL
    )
    run_dir = single_run_dir(tmp_path / "i")
    pretrained = timm.models.get_pretrained_cfg(SMALL[1])
    weights = saved_weights(run_dir)
    assert weights["normalize.mean"].flatten().tolist() == pytest.approx(list(pretrained.mean))
    assert weights["normalize.std"].flatten().tolist() == pytest.approx(list(pretrained.std))
    assert json.loads((run_dir / "config.json").read_text())["scale"] == 4000.0  # the articles' [0, 1] first

    main_in_process(project, "train", "--data", sample_dir, "--out", tmp_path / "a", "--epochs", "1", *SMALL)
    assert not any(key.startswith("normalize.") for key in saved_weights(single_run_dir(tmp_path / "a")))  # as before


def test_imagenet_on_thirteen_bands_is_one_line_before_anything_is_written(sample_dir, tmp_path):
    flags = ["--data", sample_dir, "--out", tmp_path / "runs", "--bands", "all", "--normalize", "imagenet", *SMALL]
    result = run_project(PROJECTS[0], "train", *flags, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert "--normalize imagenet: the pretrained mean and std are for 3 bands" in lines[0] and "band-stats" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def float_dir(sample_dir, tmp_path_factory):
    """The sample as float32 reflectances (digital numbers / 10,000), as a float GeoTIFF product holds them."""
    root = tmp_path_factory.mktemp("float") / "eurosat"
    for path in sample_dir.rglob("*"):
        target = root / path.relative_to(sample_dir)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif path.suffix == ".tif":
            target.parent.mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(target, (tifffile.imread(path) / 10000).astype(np.float32))
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    return root


@pytest.mark.parametrize("project", PROJECTS)
def test_float_rasters_train_with_band_stats_unclipped(project, float_dir, tmp_path):
    main_in_process(
        project, "train", "--data", float_dir, "--out", tmp_path, "--epochs", "1", "--normalize", "band-stats", *SMALL
    )
    run_dir = single_run_dir(tmp_path)
    config = json.loads((run_dir / "config.json").read_text())
    assert config["scale"] == 1.0  # the values as they are
    images = load_configured_splits(config, progress=False).train.images()
    assert images.dtype == np.float32 and images.max() < 1.0  # cached as the reflectances they are
    reference = images.astype(np.float64)
    assert config["normalization"]["mean"] == pytest.approx(reference.mean(axis=(0, 2, 3)).tolist(), rel=1e-6)
    best = json.loads((run_dir / "metrics.json").read_text())["best"]
    evaluated = main_in_process(project, "evaluate", run_dir / "best.ckpt", "--out", tmp_path / "evaluated").value
    assert evaluated["val_acc"] == pytest.approx(best["val_acc"])


def test_float_rasters_with_the_articles_scaling_or_a_nan_pixel_are_one_line(float_dir, tmp_path):
    result = run_project(PROJECTS[0], "train", "--data", float_dir, "--out", tmp_path / "runs", *SMALL, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert "--normalize articles divides digital numbers by 4000" in lines[0] and "band-stats" in lines[0]

    broken = tmp_path / "eurosat"
    shutil.copytree(float_dir, broken)
    image = tifffile.imread(broken / "Forest" / "Forest_1.tif")
    image[0, 0, 0] = np.nan
    tifffile.imwrite(broken / "Forest" / "Forest_1.tif", image)
    flags = ["--data", broken, "--out", tmp_path / "runs", "--normalize", "band-stats", "--cache-dir", tmp_path / "cache"]
    result = run_project(PROJECTS[0], "train", *flags, *SMALL, check=False)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode != 0 and "Traceback" not in result.stderr and len(lines) == 1, result.stderr
    assert "Forest_1.tif has NaN or infinite pixels" in lines[0]
