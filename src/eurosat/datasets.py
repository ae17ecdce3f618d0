"""Batches cut straight out of the cached array; scaling happens on the device, batch by batch."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from eurosat.cache import CachedImages, prepare
from eurosat.normalization import input_scale
from eurosat.sample import MARKER as SAMPLE_MARKER
from eurosat.split import split_rows


@dataclass(frozen=True)
class CachedSubset:
    """Some rows of the cache (a split): their raw integer images (N, C, H, W) and labels."""

    cache: CachedImages
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.rows)

    def images(self) -> np.ndarray:
        return self.cache.images[self.rows]  # one read of the memmap, in row order

    def labels(self) -> torch.Tensor:
        return torch.from_numpy(self.cache.labels[self.rows])


IGNORE_INDEX = -100  # the label of padding: F.cross_entropy's default ignore_index, never a predicted class


class BatchLoader:
    """Yields (raw images, labels) batches by one gather each from the split held in memory: no per-image
    Python, no collate, no worker processes. On a GPU the split can live on the device, so a batch never
    crosses the PCIe bus.

    Every batch has one shape, so that a GPU meets one input shape for training and one for evaluation (each new
    shape costs kernel selection, autotuning, and under torch.compile a recompile):
    - shuffle=True orders and shards like DistributedSampler (a permutation seeded by seed + epoch), padded with
      the permutation's first images so that every rank takes the same number of whole batches: an epoch covers
      every image, and up to batch_size - 1 of them twice.
    - shuffle=False takes strided shards, each validation image once across ranks; the last batch is filled up
      with copies of its first image labelled IGNORE_INDEX, which losses, accuracies and counts leave out.
    The batch size is capped at a rank's share of the split. set_epoch(epoch, skip_batches) starts an epoch part
    way through, for resuming from a mid-epoch checkpoint.
    """

    def __init__(
        self,
        subset: CachedSubset,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | None = None,
        for_cuda: bool = False,
    ):
        """device: where the split is held (None: host memory); for_cuda: batches go to a GPU (pinned, int16)."""
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.batch_size = max(1, min(batch_size, math.ceil(len(subset) / world_size)))
        self.device = device or torch.device("cpu")
        # NHWC in memory: a gathered batch viewed as NCHW is already channels_last, so no copy is needed for it. On
        # a GPU the split crosses as it is cached and changes layout there, which costs the host nothing
        images = as_tensor(subset.images(), for_cuda).to(self.device)
        self.images = images.permute(0, 2, 3, 1).contiguous()
        self.labels = subset.labels().to(self.device)
        self.pin_memory = for_cuda and self.device.type == "cpu"
        self.set_epoch(0)

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = epoch, skip_batches
        self.batches_done = skip_batches  # the training loop moves it on as it trains

    def state_dict(self) -> dict:
        """The position in the epoch, which Lightning's fit loop keeps in its checkpoints (the loader is "stateful"):
        batches_done, not batches fetched, because Lightning fetches one batch ahead of the one it trains."""
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.set_epoch(state["epoch"], state["batches_done"])

    def order(self) -> torch.Tensor:
        """This rank's sample positions for the current epoch."""
        size = len(self.labels)
        if not self.shuffle:
            return torch.arange(self.rank, size, self.world_size)
        order = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed + self.epoch))
        total = len(self) * self.batch_size * self.world_size
        return order.repeat(math.ceil(total / size))[:total][self.rank : total : self.world_size]

    def shard_size(self) -> int:
        """Distinct samples this rank takes per epoch."""
        size = len(self.labels)
        return math.ceil(size / self.world_size) if self.shuffle else len(range(self.rank, size, self.world_size))

    @staticmethod
    def training_batches(samples: int, batch_size: int, world_size: int = 1) -> int:
        """len() of a shuffled (training) loader of `samples` images, known before one is built."""
        shard = math.ceil(samples / world_size)
        return math.ceil(shard / max(1, min(batch_size, shard)))

    @property
    def samples(self) -> int:
        """Samples this rank trains on per epoch, padding included (evaluation: without its IGNORE_INDEX padding)."""
        return len(self) * self.batch_size if self.shuffle else self.shard_size()

    def __len__(self) -> int:
        if self.shuffle:
            return self.training_batches(len(self.labels), self.batch_size, self.world_size)
        return math.ceil(self.shard_size() / self.batch_size)

    def __iter__(self):
        order = self.order().to(self.device)
        for start in range(self.skip_batches * self.batch_size, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            images, labels = self.images[batch], self.labels[batch]
            if len(batch) < self.batch_size:  # evaluation's last batch, filled up to the one shape
                fill = self.batch_size - len(batch)
                images = torch.cat([images, images[:1].expand(fill, *images.shape[1:])])
                labels = torch.cat([labels, labels.new_full((fill,), IGNORE_INDEX)])
            yield (images.pin_memory() if self.pin_memory else images).permute(0, 3, 1, 2), labels


def as_tensor(images: np.ndarray, for_cuda: bool = False) -> torch.Tensor:
    """Raw images as a tensor. For a GPU, uint16 travels as int16 with the same bits (few CUDA kernels take
    uint16) and to_input undoes it there; on the CPU uint16 converts to float directly."""
    return torch.from_numpy(images.view(np.int16) if for_cuda and images.dtype == np.uint16 else images)


def to_input(images: torch.Tensor, scale: float, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """Raw digital numbers -> float in [0, 1] on the device (the articles' /4000 and clip; a float raster is divided
    by `scale` alone); keeps the memory format of `images`, converting only when it is not the one asked for."""
    x = images.to(device, non_blocking=True)
    if x.dtype == torch.int16:  # uint16 bits, see as_tensor
        x = x.int().bitwise_and_(0xFFFF)
    # a float raster's physical values (--normalize band-stats): nothing to clip, and never in place, since x may be
    # the cached split itself
    x = x.float() / scale if x.is_floating_point() else x.float().div_(scale).clamp_(0, 1)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def resident_device(subset: CachedSubset, device: torch.device, choice: str = "auto") -> torch.device | None:
    """Where a split's images live during training: on the GPU when they take under a quarter of its free memory
    (--data-on auto), else in host memory (None)."""
    if device.type != "cuda" or choice == "host":
        return None
    if choice == "device":
        return device
    free, _ = torch.cuda.mem_get_info(device)
    return device if subset.cache.images[:1].nbytes * len(subset) < free / 4 else None


@dataclass(frozen=True)
class EuroSATSplits:
    train: CachedSubset
    val: CachedSubset
    test: CachedSubset | None  # None: the split has no test part
    classes: tuple[str, ...]
    bands: tuple[int, ...]
    scale: float
    root: Path
    image_format: str
    band_count: int

    def input_spec(self) -> dict:
        """What the model is trained on, so that predict refuses anything else: format, bands in a file, size."""
        _, _, height, width = self.train.cache.images.shape
        return {"format": self.image_format, "bands": self.band_count, "height": height, "width": width}


# The settings that pick the data (a run recorded before --split and --test-fraction used the articles' split)
DATA_KEYS = ("data", "bands", "cache_dir", "split", "val_fraction", "test_fraction", "split_seed")


def load_configured_splits(config: dict, progress: bool = True) -> EuroSATSplits:
    """load_splits with the DATA_KEYS of a run's config, at the scale its --normalize divides by."""
    data = load_splits(
        Path(config["data"]),
        config["bands"],
        config["cache_dir"],
        config["val_fraction"],
        config["split_seed"],
        progress,
        split=config.get("split", "articles"),
        test_fraction=config.get("test_fraction", 0.0),
    )
    return replace(data, scale=input_scale(config, data.image_format, data.scale, data.train.cache.images.dtype))


def load_splits(
    data_dir: Path,
    bands: str,
    cache_dir: Path | None,
    val_fraction: float,
    seed: int,
    progress: bool = True,
    split: str = "articles",
    test_fraction: float = 0.0,
) -> EuroSATSplits:
    cache: CachedImages = prepare(data_dir, bands, cache_dir, progress)
    sample = (Path(data_dir) / SAMPLE_MARKER).exists()
    rows = split_rows(cache.labels, cache.files, data_dir, split, val_fraction, test_fraction, seed, sample)
    return EuroSATSplits(
        train=CachedSubset(cache, rows["train"]),
        val=CachedSubset(cache, rows["val"]),
        test=CachedSubset(cache, rows["test"]) if "test" in rows else None,
        classes=cache.classes,
        bands=cache.bands,
        scale=cache.scale,
        root=cache.root,
        image_format=cache.image_format,
        band_count=cache.band_count,
    )
