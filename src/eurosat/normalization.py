"""--normalize: how a band's digital numbers become the model's input.

- articles (the default): divided by 4000 (255 for JPEGs) and clipped to [0, 1], the articles' recipe;
- band-stats: each band standardised by the mean and standard deviation of the training part, as torchgeo's EuroSAT
  datamodule does, with no clip (digital numbers divided by 65535 first; a float raster's values as they are);
- imagenet: the articles' [0, 1], then the pretrained weights' mean and std (timm's pretrained config: ImageNet's for
  most), for pretrained RGB models.

The statistics live in the model, as the buffers of its first module (`normalize`), so a checkpoint carries them and
evaluate and predict use them as training did; the run's config records them too.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from eurosat.errors import UserError

FULL_RANGE = {"tif": 65535.0, "jpg": 255.0}  # band-stats' scale: the format's whole range, so nothing is clipped
CHUNK = 1024  # images per step of the statistics pass: float64 of a chunk, not of the whole split


class Standardize(nn.Module):
    """(x - mean) / std for each band; the statistics are buffers, saved and loaded with the weights."""

    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


def input_scale(config: dict, image_format: str, scale: float, dtype) -> float:
    """The divisor of the pixels: the articles' (digital numbers, clipped at 1); for band-stats the format's whole
    range, or 1 for a float raster (its values as they are)."""
    if config.get("normalize") != "band-stats":
        return scale
    return 1.0 if np.issubdtype(dtype, np.floating) else FULL_RANGE[image_format]


def band_statistics(images, rows, scale: float) -> tuple[list[float], list[float]]:
    """Each band's mean and standard deviation over images[rows] (N, bands, H, W digital numbers, the cache's memmap)
    divided by `scale`, read and accumulated in float64 a chunk at a time."""
    rows = np.sort(rows)
    total = np.zeros(images.shape[1])
    squares = np.zeros(images.shape[1])
    for first in range(0, len(rows), CHUNK):
        chunk = images[rows[first : first + CHUNK]].astype(np.float64) / scale
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
    count = len(rows) * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - np.square(mean), 0.0))
    return mean.tolist(), np.where(std > 0, std, 1.0).tolist()  # a constant band: centred, not divided by 0


def check(config: dict, band_count: int, dtype=np.uint16) -> None:
    """A choice the bands or the pixels cannot take is one line, before a run writes anything."""
    choice = config.get("normalize", "articles")
    if np.issubdtype(dtype, np.floating) and choice != "band-stats":
        raise UserError(
            f"--normalize {choice} divides digital numbers by 4000 and clips them, and these images hold {dtype} values: "
            "use --normalize band-stats"
        )
    if choice == "imagenet" and band_count != 3:
        raise UserError(
            f"--normalize imagenet: the pretrained mean and std are for 3 bands (R, G, B), and --bands {config['bands']} "
            f"has {band_count}; use --normalize band-stats"
        )


def statistics(config: dict, data) -> dict | None:
    """The mean and std a run normalises with ({"mean": [...], "std": [...]}, one per band), or None for the articles'."""
    choice = config.get("normalize", "articles")
    if choice == "band-stats":
        mean, std = band_statistics(data.train.cache.images, data.train.rows, data.scale)
        return {"mean": mean, "std": std}
    if choice == "imagenet":
        import timm

        pretrained = timm.models.get_pretrained_cfg(config["model"])  # the weights' own mean and std (ImageNet's, mostly)
        return {"mean": list(pretrained.mean), "std": list(pretrained.std)}
    return None


def normalized(model: nn.Module, stats: dict | None) -> nn.Module:
    """The model behind its Standardize step (keys `normalize.*` and `net.*`), or the model itself without one."""
    if not stats:
        return model
    return nn.Sequential(OrderedDict(normalize=Standardize(stats["mean"], stats["std"]), net=model))
