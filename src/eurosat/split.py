"""How the images are divided: the articles' stratified split, or the published train/val/test lists.

`articles` (the default): stratified 80/20 with seed 42 (27,000 files -> 21,600 train / 5,400 validation), with an
optional stratified test share held out first (--test-fraction). `torchgeo`: the lists of Neumann et al. 2019 that
torchgeo uses (16,200 / 5,400 / 5,400), read from the data folder and MD5-checked.

The articles split with scikit-learn's `train_test_split(..., stratify=labels, random_state=42)`. This is that
function's algorithm (StratifiedShuffleSplit, scikit-learn 1.x) in numpy, draw for draw, so that it returns the
same indices: importing scikit-learn costs every training process about 2 s of start-up, more than the rest of
the split's work. tests/test_split.py compares the two on many label sets.
"""

from __future__ import annotations

import hashlib
from math import ceil
from pathlib import Path

import numpy as np

from eurosat.errors import UserError

SPLITS = ("articles", "torchgeo")
# The published lists, in torchgeo's dataset repository on the Hugging Face hub beside EuroSATallBands.zip
SPLIT_LISTS = {
    "train": ("eurosat-train.txt", "908f142e73d6acdf3f482c5e80d851b1"),
    "val": ("eurosat-val.txt", "95de90f2aa998f70a3b2416bfe0687b4"),
    "test": ("eurosat-test.txt", "7ae5ab94471417b6e315763121e67c5f"),
}


def split_rows(
    labels, files: tuple[str, ...], data_dir: Path, split: str, val_fraction: float, test_fraction: float, seed: int, sample: bool
) -> dict[str, np.ndarray]:
    """The rows of each part ("train", "val" and, when the split has one, "test"). sample: the data folder is a
    synthetic sample, whose own lists are not the published ones (no MD5 check)."""
    labels = np.asarray(labels)
    if split == "torchgeo":
        if test_fraction:
            raise UserError("--test-fraction applies to --split articles: the torchgeo split has its own test part")
        return published_split(files, Path(data_dir), check_md5=not sample)
    if not 0 <= test_fraction < 1:
        raise UserError(f"--test-fraction {test_fraction}: must be 0 or more and below 1")
    rows = np.arange(len(labels))
    parts = {}
    if test_fraction:
        rest, test = stratified_split(labels, test_fraction, seed, flag="--test-fraction", part="test")
        rows, parts["test"] = rest, test
    train, val = stratified_split(labels[rows], val_fraction, seed)
    return {"train": rows[train], "val": rows[val], **parts}


def published_split(files: tuple[str, ...], data_dir: Path, check_md5: bool = True) -> dict[str, np.ndarray]:
    """The rows each published list names. The lists name `<Class>_<n>.jpg`, for the RGB and the 13-band files
    alike (torchgeo maps the name to `.tif`): a name is matched by its stem, in the folder of its class."""
    rows_by_name = {name.rsplit(".", 1)[0]: row for row, name in enumerate(files)}  # "Forest/Forest_1"
    classes = {name.split("/", 1)[0] for name in files}
    parts = {}
    for part, (filename, md5) in SPLIT_LISTS.items():
        path = data_dir / filename
        if not path.is_file():
            raise UserError(f"--split torchgeo needs {path}: run `make data` (it fetches the published lists beside the images)")
        content = path.read_bytes()
        if check_md5 and (actual := hashlib.md5(content).hexdigest()) != md5:
            raise UserError(f"{path} has MD5 {actual}, not the published {md5}: run `make data` to fetch it again")
        rows = []
        try:
            text = content.decode("utf-8-sig")  # a byte-order mark, as Windows editors write, is not part of a name
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}): save it as UTF-8") from None
        for number, line in enumerate(text.splitlines(), 1):
            if not (name := line.strip()):
                continue
            stem = name.rsplit(".", 1)[0]
            class_name = stem.rsplit("_", 1)[0]
            if class_name not in classes:
                raise UserError(f"{path} line {number} names {name}, of class {class_name}, which {data_dir} has no folder for")
            if (row := rows_by_name.get(f"{class_name}/{stem}")) is None:
                raise UserError(
                    f"{path} line {number} names {name}, which is not in {data_dir}'s {class_name} folder: "
                    "restore the data (make data) or use --split articles"
                )
            rows.append(row)
        parts[part] = np.asarray(rows, dtype=np.int64)
    seen = np.concatenate(list(parts.values()))
    if len(np.unique(seen)) < len(seen):
        raise UserError(f"the lists in {data_dir} name an image twice: run `make data` to fetch the published lists again")
    return parts


def stratified_split(
    labels, val_fraction: float = 0.2, seed: int = 42, flag: str = "--val-fraction", part: str = "validation"
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the train and validation samples; the same on every run and machine for the same inputs, and
    the same as scikit-learn's train_test_split(indices, test_size=val_fraction, stratify=labels,
    random_state=seed). flag and part name the share in errors."""
    labels = np.asarray(labels)
    if not 0 < val_fraction < 1:
        raise UserError(f"{flag} {val_fraction}: must be between 0 and 1")
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < 2:
        raise UserError("every class needs at least 2 images for a stratified split")
    n_val = ceil(val_fraction * len(labels))
    n_train = len(labels) - n_val
    if min(n_train, n_val) < len(classes):
        raise UserError(
            f"cannot split {len(labels)} images with {flag} {val_fraction}: the {n_train} train and {n_val} "
            f"{part} images must each hold at least one of every class ({len(classes)})"
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
