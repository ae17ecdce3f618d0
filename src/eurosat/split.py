"""The articles' split: stratified 80/20 with seed 42 (27,000 files -> 21,600 train / 5,400 validation)."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

from eurosat.errors import UserError


def stratified_split(labels, val_fraction: float = 0.2, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the train and validation samples; the same on every run and machine for the same inputs."""
    labels = np.asarray(labels)
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction}: must be between 0 and 1")
    counts = np.bincount(labels)
    if counts[counts > 0].min() < 2:
        raise UserError("every class needs at least 2 images for a stratified split")
    indices = np.arange(len(labels))
    try:
        train, val = train_test_split(indices, test_size=val_fraction, stratify=labels, random_state=seed)
    except ValueError as exc:  # too few samples for the fraction asked
        raise UserError(f"cannot split {len(labels)} images with --val-fraction {val_fraction}: {exc}") from None
    return train, val
