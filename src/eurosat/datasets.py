"""Torch datasets over the cached array; scaling happens on the device, batch by batch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from eurosat.cache import CachedImages, prepare
from eurosat.split import stratified_split


class CachedDataset(Dataset):
    """(raw integer image CHW, label) for a subset of the cache; workers re-open the memmap, never copy it."""

    def __init__(self, npy: Path, labels: np.ndarray, indices: np.ndarray):
        self.npy, self.labels, self.indices = Path(npy), labels, np.asarray(indices)
        self._images = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        if self._images is None:
            self._images = np.load(self.npy, mmap_mode="r")
        j = self.indices[i]
        return torch.from_numpy(np.array(self._images[j])), int(self.labels[j])

    def __getstate__(self):
        return {**self.__dict__, "_images": None}


class ShardSampler(Sampler):
    """Every rank takes indices rank, rank + world, ... without padding, so each sample is counted once."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, length, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def to_input(images: torch.Tensor, scale: float, device: torch.device, channels_last: bool = True) -> torch.Tensor:
    """Raw digital numbers -> float in [0, 1] on the device (the articles' /4000 and clip)."""
    x = images.to(device, non_blocking=True).float().div_(scale).clamp_(0, 1)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


@dataclass(frozen=True)
class EuroSATSplits:
    train: CachedDataset
    val: CachedDataset
    classes: tuple[str, ...]
    bands: tuple[int, ...]
    scale: float
    root: Path


DATA_KEYS = ("data", "bands", "cache_dir", "val_fraction", "split_seed")  # the settings that pick the data


def load_configured_splits(config: dict, progress: bool = True) -> EuroSATSplits:
    """load_splits with the DATA_KEYS of a run's config."""
    return load_splits(
        Path(config["data"]), config["bands"], config["cache_dir"], config["val_fraction"], config["split_seed"], progress
    )


def load_splits(
    data_dir: Path, bands: str, cache_dir: Path | None, val_fraction: float, seed: int, progress: bool = True
) -> EuroSATSplits:
    cache: CachedImages = prepare(data_dir, bands, cache_dir, progress)
    train_idx, val_idx = stratified_split(cache.labels, val_fraction, seed)
    return EuroSATSplits(
        train=CachedDataset(cache.path, cache.labels, train_idx),
        val=CachedDataset(cache.path, cache.labels, val_idx),
        classes=cache.classes,
        bands=cache.bands,
        scale=cache.scale,
        root=cache.root,
    )
