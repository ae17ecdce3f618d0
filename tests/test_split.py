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
