"""BatchLoader's one batch shape: training pads a shard with images of its own permutation, evaluation fills its last
batch with padding that counts nowhere; on one rank or several, every image is still covered."""

import numpy as np
import pytest
import torch

from eurosat.cache import prepare
from eurosat.datasets import IGNORE_INDEX, BatchLoader, CachedSubset
from eurosat.inference import evaluate
from eurosat.sample import write_sample


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """50 cached images (5 per class), all rows."""
    root = tmp_path_factory.mktemp("batches")
    write_sample(root / "eurosat", fraction=0.001)
    cache = prepare(root / "eurosat", "rgb", root / "cache", progress=False)
    return CachedSubset(cache, np.arange(len(cache.labels)))


def epoch(loader: BatchLoader) -> list[tuple[torch.Size, torch.Tensor]]:
    return [(images.shape, labels) for images, labels in loader]


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_training_batches_are_whole_and_cover_every_image(subset, world_size):
    rows = []
    for rank in range(world_size):
        loader = BatchLoader(subset, 8, shuffle=True, seed=1, rank=rank, world_size=world_size)
        loader.set_epoch(3)
        batches = epoch(loader)
        assert {shape for shape, _ in batches} == {(8, 3, 64, 64)}  # 50 / world_size is never a multiple of 8
        assert len(batches) == len(loader) and loader.samples == 8 * len(loader)
        rows += loader.order().tolist()
    assert set(rows) == set(range(50))  # every image, a few twice
    assert len(rows) - 50 < 8 * world_size


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_evaluation_batches_are_whole_and_count_every_image_once(subset, world_size):
    labels = []
    for rank in range(world_size):
        loader = BatchLoader(subset, 8, shuffle=False, rank=rank, world_size=world_size)
        batches = epoch(loader)
        assert {shape for shape, _ in batches} == {(8, 3, 64, 64)}
        real = torch.cat([batch_labels[batch_labels != IGNORE_INDEX] for _, batch_labels in batches])
        assert len(real) == loader.samples == len(range(rank, 50, world_size))
        assert (torch.cat([batch_labels for _, batch_labels in batches])[len(real) :] == IGNORE_INDEX).all()
        labels += real.tolist()
    assert sorted(labels) == sorted(subset.labels().tolist())


def test_a_batch_is_never_larger_than_the_split(subset):
    assert {shape[0] for shape, _ in epoch(BatchLoader(subset, 1024, shuffle=True))} == {50}
    assert {shape[0] for shape, _ in epoch(BatchLoader(subset, 1024, shuffle=False, rank=1, world_size=2))} == {25}


def test_evaluation_leaves_the_padding_out_of_loss_accuracy_and_count(subset):
    """The padded loader gives the totals of an unpadded pass (batch 10 divides 50 exactly)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 64 * 64, 10))
    padded = evaluate(model, BatchLoader(subset, 8, shuffle=False), subset.cache.scale, torch.device("cpu"))
    whole = evaluate(model, BatchLoader(subset, 10, shuffle=False), subset.cache.scale, torch.device("cpu"))
    assert padded[2] == whole[2] == 50
    assert padded[1] == whole[1] and padded[0].item() == pytest.approx(whole[0].item())
