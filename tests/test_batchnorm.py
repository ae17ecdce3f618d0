"""BatchNorm statistics of the saved model describe its weights on the training data, however short the epoch.

Each case trains one epoch from random weights on synthetic EuroSAT-format data, then scores best.ckpt twice on the
validation split: as saved, and with its statistics recomputed from scratch over the whole training split by
torch.optim.swa_utils.update_bn in one batch (an implementation of its own). The two must agree within 0.02; with
the running averages alone (--bn-stats running) the saved model is far worse."""

import pytest
import torch
from helpers import PROJECTS, main_in_process, read_metrics, single_run_dir

from eurosat.datasets import BatchLoader, load_configured_splits, to_input
from eurosat.inference import evaluate
from eurosat.lifecycle import trained_model
from eurosat.projects import load_project
from eurosat.sample import write_sample

pytestmark = pytest.mark.slow

# Half of the images validate: 640 images, 320 to train on in 5 steps at batch 64; 2816 images, 1408 in 22 steps (a GPU
# epoch's steps at the default batch). Smaller batches leave BatchNorm's estimates noisy: the references below then
# differ among themselves by up to 0.04 (measured with batchings of 16 to 128 images, in order and shuffled).
CASES = {"resnet10t-5-steps": ("resnet10t", 640), "tf_efficientnet_b0-22-steps": ("tf_efficientnet_b0", 2816)}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("bn-data")
    folders = {}
    for images in {count for _, count in CASES.values()}:
        write_sample(root / str(images), fraction=images / 27000)
        folders[images] = root / str(images)
    return folders


def accuracy_with_statistics_recomputed(project: str, checkpoint) -> float:
    model, config = trained_model(load_project(project).EXPERIMENT, checkpoint, torch.device("cpu"))
    data = load_configured_splits(config, progress=False)
    ((images, _),) = BatchLoader(data.train, len(data.train), shuffle=False)  # the whole split in one batch
    torch.optim.swa_utils.update_bn([to_input(images, data.scale, torch.device("cpu"))], model)
    _, correct, seen = evaluate(model, BatchLoader(data.val, 64, shuffle=False), data.scale, torch.device("cpu")).tolist()
    return correct / seen


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("project", PROJECTS)
def test_the_saved_model_scores_what_its_weights_do_with_recomputed_statistics(project, case, datasets, tmp_path):
    model, images = CASES[case]
    common = ["--data", datasets[images], "--epochs", "1", "--model", model, "--batch-size", "64", "--val-fraction", "0.5"]
    common += ["--precision"]
    common += ["fp32" if project == "eurosat-amp" else "32-true", "--no-pretrained"]
    choices = ("auto", "running") if case == "resnet10t-5-steps" else ("auto",)  # (the running averages' cost once)
    scores = {}
    for choice in choices:
        out = tmp_path / choice
        main_in_process(project, "train", *common, "--out", out, "--bn-stats", choice)
        run_dir = single_run_dir(out)
        (record,) = read_metrics(run_dir)
        scores[choice] = (record["val_acc"], accuracy_with_statistics_recomputed(project, run_dir / "best.ckpt"), record)
    saved, recomputed, record = scores["auto"]
    print(f"{project} {case}: train acc {record['acc']:.3f}, val_acc as saved {saved:.3f}, recomputed {recomputed:.3f}; "
          f"recompute {record['bn_recompute_s']:.2f} s of the epoch's {record['seconds']:.2f} s")  # fmt: skip
    assert abs(saved - recomputed) <= 0.02 and record["bn_recompute_s"] > 0
    if "running" in scores:  # what the recompute is for: the running averages alone describe earlier weights
        running, _, record = scores["running"]
        print(f"  with the running averages alone: val_acc {running:.3f}")
        assert running < recomputed - 0.5 and record["bn_recompute_s"] == 0
