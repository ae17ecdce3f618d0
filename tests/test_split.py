import subprocess
import sys

import numpy as np
import pytest

from eurosat import CLASS_NAMES
from eurosat.errors import UserError
from eurosat.files import list_files
from eurosat.sample import OFFICIAL_COUNTS
from eurosat.split import stratified_split


@pytest.fixture(scope="module")
def official_listing(tmp_path_factory):
    """The 27,000 file names of EuroSAT as empty files: listing and split need no pixels."""
    root = tmp_path_factory.mktemp("listing")
    for name, count in OFFICIAL_COUNTS.items():
        (root / name).mkdir()
        for n in range(1, count + 1):
            (root / name / f"{name}_{n}.tif").touch()
    return list_files(root)


def test_listing_has_sorted_classes_and_every_file(official_listing):
    assert official_listing.classes == tuple(sorted(CLASS_NAMES))
    assert len(official_listing.files) == 27_000
    counts = np.bincount(official_listing.labels)
    assert dict(zip(official_listing.classes, counts.tolist(), strict=True)) == OFFICIAL_COUNTS
    # files are grouped by class in class order, and sorted within a class
    assert official_listing.files[0].startswith("AnnualCrop/")
    assert official_listing.files[-1].startswith("SeaLake/")
    forest = [f for f in official_listing.files if f.startswith("Forest/")]
    assert forest == sorted(forest)


def test_split_is_80_20_and_stratified(official_listing):
    labels = np.asarray(official_listing.labels)
    train, val = stratified_split(labels)
    assert (len(train), len(val)) == (21_600, 5_400)
    assert len(np.intersect1d(train, val)) == 0 and len(np.union1d(train, val)) == 27_000
    for label, count in enumerate(np.bincount(labels)):
        assert np.sum(labels[val] == label) == count // 5


def test_split_is_deterministic_across_processes(official_listing):
    labels = np.asarray(official_listing.labels)
    _, val = stratified_split(labels)
    _, again = stratified_split(labels)
    assert np.array_equal(val, again)
    code = (
        "import numpy as np, sys; from eurosat.split import stratified_split;"
        "labels = np.repeat(np.arange(10), [3000, 3000, 3000, 2500, 2500, 2000, 2500, 3000, 2500, 3000]);"
        "sys.stdout.write(','.join(map(str, stratified_split(labels)[1][:50])))"
    )
    other_process = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert other_process == ",".join(map(str, val[:50]))


def test_split_seed_and_fraction_are_configurable(official_listing):
    labels = np.asarray(official_listing.labels)
    _, val42 = stratified_split(labels)
    _, val7 = stratified_split(labels, seed=7)
    assert not np.array_equal(np.sort(val42), np.sort(val7))
    train, val = stratified_split(labels, val_fraction=0.1)
    assert (len(train), len(val)) == (24_300, 2_700)


def test_split_rejects_bad_fraction():
    with pytest.raises(UserError, match="val-fraction"):
        stratified_split(np.repeat(np.arange(3), 10), val_fraction=1.5)


@pytest.mark.parametrize("seed", [42, 0, 7])
@pytest.mark.parametrize("val_fraction", [0.2, 0.1, 0.25, 0.33, 0.5])
def test_split_draws_exactly_what_scikit_learns_train_test_split_draws(official_listing, val_fraction, seed):
    """The split is scikit-learn's algorithm without its import (2 s of every run's start): the same indices, in
    the same order, for the official counts, a sample's, uneven and missing classes and ties in the remainders."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    label_sets = [
        np.asarray(official_listing.labels),
        np.repeat(np.arange(10), [max(5, round(c * 0.02)) for c in OFFICIAL_COUNTS.values()]),  # make data-sample's
        np.repeat([0, 1, 2, 5], [7, 3, 11, 2]),  # a label missing from the middle, classes of 2 and 3
        np.repeat(np.arange(7), 9),  # every remainder tied
        rng.permutation(np.repeat(np.arange(4), [40, 13, 27, 8])),  # not grouped by class
    ]
    for labels in label_sets:
        try:
            expected = train_test_split(np.arange(len(labels)), test_size=val_fraction, stratify=labels, random_state=seed)
        except ValueError:  # too few images for a class in each part: one line here
            with pytest.raises(UserError, match="cannot split"):
                stratified_split(labels, val_fraction, seed)
            continue
        actual = stratified_split(labels, val_fraction, seed)
        assert [a.tolist() for a in actual] == [e.tolist() for e in expected], (len(labels), val_fraction, seed)


def test_a_split_too_small_for_every_class_is_one_line():
    with pytest.raises(UserError, match=r"cannot split 20 images with --val-fraction 0.1: the 18 train and 2 validation"):
        stratified_split(np.repeat(np.arange(4), 5), val_fraction=0.1)
    with pytest.raises(UserError, match="every class needs at least 2 images"):
        stratified_split(np.array([0, 0, 1]))
