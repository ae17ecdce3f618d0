"""Per-class metrics and the confusion matrix (eurosat.evaluation) against scikit-learn's own report, and the files
a run directory gets: evaluation.json, confusion_matrix.csv and a real PNG."""

import csv
import json
import struct

import numpy as np
import pytest
from sklearn.metrics import classification_report

from eurosat.evaluation import FILES, class_report, table, write

CLASSES = ["AnnualCrop", "Forest", "HerbaceousVegetation", "Highway", "River"]


@pytest.fixture
def labels():
    """Predictions of a mediocre model; no image is predicted as Highway (its precision is 0 by convention)."""
    rng = np.random.default_rng(3)
    targets = rng.integers(0, len(CLASSES), 200)
    predicted = np.where(rng.random(200) < 0.6, targets, rng.integers(0, len(CLASSES), 200))
    predicted[predicted == 3] = 4
    return targets, predicted


def test_the_figures_are_scikit_learns_classification_report(labels):
    targets, predicted = labels
    report = class_report(targets, predicted, CLASSES)
    expected = classification_report(targets, predicted, target_names=CLASSES, output_dict=True, zero_division=0)
    for name in CLASSES:
        row = report["per_class"][name]
        assert [row["precision"], row["recall"], row["f1"]] == pytest.approx(
            [expected[name]["precision"], expected[name]["recall"], expected[name]["f1-score"]]
        )
        assert row["support"] == expected[name]["support"]
    for average in ("macro", "weighted"):
        row, reference = report["averages"][average], expected[f"{average} avg"]
        assert [row["precision"], row["recall"], row["f1"]] == pytest.approx(
            [reference["precision"], reference["recall"], reference["f1-score"]]
        )
    assert report["accuracy"] == pytest.approx(expected["accuracy"]) and report["per_class"]["Highway"]["precision"] == 0
    matrix = np.array(report["confusion_matrix"])
    assert matrix.sum() == report["samples"] == 200 and matrix.trace() == round(report["accuracy"] * 200)
    assert matrix[:, 3].sum() == 0 and list(matrix.sum(axis=1)) == [report["per_class"][c]["support"] for c in CLASSES]


def test_a_class_absent_from_the_data_is_a_row_of_zeros():
    report = class_report(np.array([0, 0, 1]), np.array([0, 1, 1]), ["A", "B", "C"])
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]
    assert report["per_class"]["C"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    expected = classification_report([0, 0, 1], [0, 1, 1], labels=[0, 1, 2], output_dict=True, zero_division=0)
    for average in ("macro", "weighted"):  # the absent class counts in the macro average, as a 0
        row, reference = report["averages"][average], expected[f"{average} avg"]
        assert [row["precision"], row["recall"], row["f1"]] == pytest.approx(
            [reference["precision"], reference["recall"], reference["f1-score"]]
        )


def test_the_table_is_aligned_and_names_every_class(labels):
    report = class_report(*labels, CLASSES)
    lines = table(report).splitlines()
    assert lines[0].split() == ["precision", "recall", "f1-score", "support"]
    rows = [line for line in lines[1:] if line]
    assert [line.rsplit(maxsplit=4)[0].strip() for line in rows] == [*CLASSES, "accuracy", "macro avg", "weighted avg"]
    assert len({len(line) for line in rows}) == 1  # one width: the columns line up
    assert rows[-3].split()[-2:] == [f"{report['accuracy']:.4f}", "200"]


def png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_the_files_a_report_is_written_to(labels, tmp_path):
    report = class_report(*labels, CLASSES)
    picture = write(report, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    assert json.loads((tmp_path / "evaluation.json").read_text()) == report
    rows = list(csv.reader((tmp_path / "confusion_matrix.csv").open()))
    assert rows[0] == ["true \\ predicted", *CLASSES]
    assert [row[0] for row in rows[1:]] == CLASSES
    assert [[int(n) for n in row[1:]] for row in rows[1:]] == report["confusion_matrix"]
    width, height = png_size(tmp_path / "confusion_matrix.png")
    assert picture.shape == (height, width, 3) and picture.dtype == np.uint8
    assert (width, height) == (475, 385)  # 0.75 in a class plus margins, at 100 dpi
    assert len(np.unique(picture.reshape(-1, 3), axis=0)) > 50  # drawn, not blank
