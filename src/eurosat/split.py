"""The articles' split: stratified 80/20 with seed 42 (27,000 files -> 21,600 train / 5,400 validation).

The articles split with scikit-learn's `train_test_split(..., stratify=labels, random_state=42)`. This is that
function's algorithm (StratifiedShuffleSplit, scikit-learn 1.x) in numpy, draw for draw, so that it returns the
same indices: importing scikit-learn costs every training process about 2 s of start-up, more than the rest of
the split's work. tests/test_split.py compares the two on many label sets.
"""

from __future__ import annotations

from math import ceil

import numpy as np

from eurosat.errors import UserError


def stratified_split(labels, val_fraction: float = 0.2, seed: int = 42) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the train and validation samples; the same on every run and machine for the same inputs, and
    the same as scikit-learn's train_test_split(indices, test_size=val_fraction, stratify=labels,
    random_state=seed)."""
    labels = np.asarray(labels)
    if not 0 < val_fraction < 1:
        raise UserError(f"--val-fraction {val_fraction}: must be between 0 and 1")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise UserError("every class needs at least 2 images for a stratified split")
    n_val = ceil(val_fraction * len(labels))
    n_train = len(labels) - n_val
    if min(n_train, n_val) < len(classes):
        raise UserError(
            f"cannot split {len(labels)} images with --val-fraction {val_fraction}: the {n_train} train and {n_val} "
            f"validation images must each hold at least one of every class ({len(classes)})"
        )
    by_class = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
    rng = np.random.RandomState(seed)
    train_counts = _approximate_mode(counts, n_train, rng)
    val_counts = _approximate_mode(counts - train_counts, n_val, rng)
    train, val = [], []
    for members, n_t, n_v in zip(by_class, train_counts, val_counts, strict=True):
        shuffled = members.take(rng.permutation(len(members)), mode="clip")
        train.extend(shuffled[:n_t])
        val.extend(shuffled[n_t : n_t + n_v])
    return rng.permutation(train), rng.permutation(val)


def _approximate_mode(class_counts: np.ndarray, n_draws: int, rng: np.random.RandomState) -> np.ndarray:
    """How many of `n_draws` to take from each class: the floor of each class's share, then one more for the
    largest remainders, ties broken at random (scikit-learn's sklearn.utils.extmath._approximate_mode)."""
    continuous = class_counts / class_counts.sum() * n_draws
    floored = np.floor(continuous)
    need_to_add = int(n_draws - floored.sum())
    if need_to_add > 0:
        remainder = continuous - floored
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            add_now = min(len(tied), need_to_add)
            floored[rng.choice(tied, size=add_now, replace=False)] += 1
            need_to_add -= add_now
            if need_to_add == 0:
                break
    return floored.astype(int)
