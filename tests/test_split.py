import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from eurosat import CLASS_NAMES
from eurosat.errors import UserError
from eurosat.files import list_files
from eurosat.sample import OFFICIAL_COUNTS
from eurosat.split import SPLIT_LISTS, published_split, split_rows, stratified_split


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
        "import numpy as np, sys; from eurosat.split import SPLIT_LISTS, published_split, split_rows, stratified_split;"
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


def published_lists(listing, folder, shares=(0.6, 0.2, 0.2), seed=0):
    """eurosat-{train,val,test}.txt in the published format (<Class>_<n>.jpg, one a line) for a listing's files:
    the official lists' sizes (16,200 / 5,400 / 5,400) for the official file names."""
    names = [f"{Path(name).stem}.jpg" for name in listing.files]
    order = np.random.default_rng(seed).permutation(len(names))
    cut = np.cumsum([round(share * len(names)) for share in shares])[:-1]
    for part, rows in zip(("train", "val", "test"), np.split(order, cut), strict=True):
        (folder / f"eurosat-{part}.txt").write_text("".join(f"{names[row]}\n" for row in rows))


def test_the_published_lists_map_their_jpg_names_to_the_files_on_disk(official_listing, tmp_path):
    published_lists(official_listing, tmp_path)
    parts = published_split(official_listing.files, tmp_path, check_md5=False)
    assert {part: len(rows) for part, rows in parts.items()} == {"train": 16_200, "val": 5_400, "test": 5_400}
    assert len(np.unique(np.concatenate(list(parts.values())))) == 27_000  # disjoint, every image once
    listed = (tmp_path / "eurosat-test.txt").read_text().split()
    assert [official_listing.files[row] for row in parts["test"][:3]] == [
        f"{name.rsplit('_', 1)[0]}/{name.replace('.jpg', '.tif')}" for name in listed[:3]
    ]


def test_lists_other_than_the_published_ones_are_one_line_naming_the_file_and_the_md5s(official_listing, tmp_path):
    published_lists(official_listing, tmp_path)
    expected = SPLIT_LISTS["train"][1]
    with pytest.raises(UserError, match=rf"{tmp_path}/eurosat-train.txt has MD5 [0-9a-f]{{32}}, not the published {expected}"):
        published_split(official_listing.files, tmp_path)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("Forest_9999.jpg", r"eurosat-val.txt line 2 names Forest_9999.jpg, which is not in .*'s Forest folder"),
        ("Glacier_1.jpg", r"eurosat-val.txt line 2 names Glacier_1.jpg, of class Glacier, which .* has no folder for"),
        ("Forest_1.jpg", r"name an image twice"),
    ],
)
def test_a_list_naming_an_image_the_data_lacks_is_one_line(tmp_path, line, message):
    for name in ("Forest", "River"):
        (tmp_path / name).mkdir()
        for n in (1, 2):
            (tmp_path / name / f"{name}_{n}.tif").touch()
    files = list_files(tmp_path).files
    (tmp_path / "eurosat-train.txt").write_text("Forest_1.jpg\nRiver_1.jpg\n")
    (tmp_path / "eurosat-val.txt").write_text(f"Forest_2.jpg\n{line}\n")
    (tmp_path / "eurosat-test.txt").write_text("River_2.jpg\n")
    with pytest.raises(UserError, match=message):
        published_split(files, tmp_path, check_md5=False)
    (tmp_path / "eurosat-val.txt").write_text("Forest_2.jpg\n")
    (tmp_path / "eurosat-test.txt").unlink()
    with pytest.raises(UserError, match=r"--split torchgeo needs .*eurosat-test.txt: run `make data`"):
        split_rows(np.zeros(len(files)), files, tmp_path, "torchgeo", 0.2, 0.0, 42, sample=True)


def test_a_test_fraction_holds_out_a_stratified_test_part_first(official_listing, tmp_path):
    labels = np.asarray(official_listing.labels)
    parts = split_rows(labels, official_listing.files, tmp_path, "articles", 0.2, 0.1, 42, sample=False)
    assert {part: len(rows) for part, rows in parts.items()} == {"train": 19_440, "val": 4_860, "test": 2_700}
    assert len(np.unique(np.concatenate(list(parts.values())))) == 27_000
    for label, count in enumerate(np.bincount(labels)):
        assert np.sum(labels[parts["test"]] == label) == count // 10
    without = split_rows(labels, official_listing.files, tmp_path, "articles", 0.2, 0.0, 42, sample=False)
    assert without.keys() == {"train", "val"}  # no test part: the articles' split as it always was
    assert [rows.tolist() for rows in without.values()] == [rows.tolist() for rows in stratified_split(labels)]
    with pytest.raises(UserError, match="--test-fraction applies to --split articles"):
        split_rows(labels, official_listing.files, tmp_path, "torchgeo", 0.2, 0.1, 42, sample=False)
    with pytest.raises(UserError, match=r"--test-fraction 1.0: must be 0 or more and below 1"):
        split_rows(labels, official_listing.files, tmp_path, "articles", 0.2, 1.0, 42, sample=False)


def test_lists_saved_with_a_byte_order_mark_read_as_the_names_they_hold(tmp_path):
    """Windows editors start a UTF-8 file with a byte-order mark: it is not part of the first name."""
    for name in ("Forest", "River"):
        (tmp_path / name).mkdir()
        for n in (1, 2, 3):
            (tmp_path / name / f"{name}_{n}.tif").touch()
    files = list_files(tmp_path).files
    lists = {
        "train": "Forest_1.jpg\r\nRiver_1.jpg\r\n",
        "val": "Forest_2.jpg\r\nRiver_2.jpg\r\n",
        "test": "Forest_3.jpg\r\nRiver_3.jpg\r\n",
    }
    for part, text in lists.items():
        (tmp_path / f"eurosat-{part}.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    parts = published_split(files, tmp_path, check_md5=False)
    assert [files[row] for row in parts["train"]] == ["Forest/Forest_1.tif", "River/River_1.tif"]
    (tmp_path / "eurosat-test.txt").write_bytes("Forest_3.jpg\nRiver_3.jpg\n".encode("utf-16"))
    with pytest.raises(UserError, match=r"eurosat-test.txt is not UTF-8 text \(invalid start byte at byte 0\): save it as UTF-8"):
        published_split(files, tmp_path, check_md5=False)
