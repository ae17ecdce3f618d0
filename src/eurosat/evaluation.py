"""Per-class metrics and the confusion matrix of a classifier on a validation split: scikit-learn's figures,
printed as a table, written as evaluation.json, confusion_matrix.csv and confusion_matrix.png."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from eurosat.datasets import IGNORE_INDEX, to_input
from eurosat.runs import write_json

FILES = ("evaluation.json", "confusion_matrix.csv", "confusion_matrix.png")


@torch.no_grad()
def predictions(model, loader, scale: float, device: torch.device, amp_dtype=None) -> tuple[np.ndarray, np.ndarray, float]:
    """(true labels, predicted labels, summed loss) over the loader, the padding left out."""
    model.eval()
    targets, predicted, loss_sum = [], [], torch.zeros((), device=device, dtype=torch.float64)
    for images, labels in loader:
        x, y = to_input(images, scale, device), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum", ignore_index=IGNORE_INDEX)
        kept = y != IGNORE_INDEX
        targets.append(y[kept].cpu())
        predicted.append(logits.argmax(1)[kept].cpu())
    return torch.cat(targets).numpy(), torch.cat(predicted).numpy(), float(loss_sum)


def class_report(targets, predicted, classes: list[str]) -> dict:
    """Precision, recall, F1 and support per class, their macro and weighted averages, accuracy and the confusion
    matrix (rows: true class, columns: predicted class): scikit-learn's classification_report figures with
    zero_division=0 (tests/test_evaluation.py compares them), in numpy, which spares every run's end the ~2 s of
    importing sklearn.metrics."""
    targets, predicted, n = np.asarray(targets, dtype=np.int64), np.asarray(predicted, dtype=np.int64), len(classes)
    return matrix_report(np.bincount(targets * n + predicted, minlength=n * n).reshape(n, n), classes)


def matrix_report(matrix, classes: list[str]) -> dict:
    """class_report's figures from the confusion matrix alone (rows: true class, columns: predicted class)."""
    matrix, n = np.asarray(matrix, dtype=np.int64), len(classes)
    hits, support, chosen = np.diag(matrix), matrix.sum(axis=1), matrix.sum(axis=0)
    precision, recall, f1 = _ratio(hits, chosen), _ratio(hits, support), _ratio(2 * hits, support + chosen)
    per_class = {
        name: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for name, p, r, f, s in zip(classes, precision, recall, f1, support, strict=True)
    }
    averages = {}
    for average, weights in (("macro", np.ones(n)), ("weighted", support)):
        total = weights.sum()
        p, r, f = ((values * weights).sum() / total if total else 0.0 for values in (precision, recall, f1))
        averages[average] = {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(support.sum())}
    return {
        "classes": list(classes),
        "samples": int(support.sum()),
        "accuracy": float(hits.sum() / support.sum()) if support.sum() else 0.0,
        "per_class": per_class,
        "averages": averages,
        "confusion_matrix": matrix.tolist(),
    }


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator, 0 where the denominator is 0 (scikit-learn's zero_division=0)."""
    return np.divide(numerator, denominator, out=np.zeros(len(numerator)), where=denominator > 0)


def table(report: dict) -> str:
    """The report as an aligned text table, laid out as scikit-learn's classification_report prints it."""
    width = max(len(name) for name in [*report["classes"], "weighted avg"])

    def line(name, row) -> str:
        return f"{name:>{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:8.4f}  {row['support']:7d}"

    lines = [f"{'':>{width}}  precision  recall  f1-score  support"]
    lines += [line(name, report["per_class"][name]) for name in report["classes"]]
    lines += ["", f"{'accuracy':>{width}}  {'':9}  {'':6}  {report['accuracy']:8.4f}  {report['samples']:7d}"]
    lines += [line(f"{average} avg", report["averages"][average]) for average in ("macro", "weighted")]
    return "\n".join(lines)


def draw_matrix(axes, report: dict, counts: bool, fontsize: int) -> None:
    """The confusion matrix on matplotlib axes, coloured by each row's shares; with counts, each cell's count and share."""
    matrix = np.asarray(report["confusion_matrix"])
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    for (row, column), count in np.ndenumerate(matrix) if counts else ():
        if count == 0 and row != column:  # an empty cell stays blank, so the mistakes stand out
            continue
        color = "white" if shares[row, column] > 0.5 else "black"
        axes.text(column, row, f"{count}\n{shares[row, column]:.0%}", ha="center", va="center", fontsize=7, color=color)
    classes = report["classes"]
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right", fontsize=fontsize)
    axes.set_yticks(range(len(classes)), classes, fontsize=fontsize)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")


def confusion_figure(report: dict):
    """The confusion matrix as a matplotlib figure: counts, and each row's shares (recall on the diagonal)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    classes = report["classes"]
    figure, axes = plt.subplots(figsize=(1.0 + 0.75 * len(classes), 0.6 + 0.65 * len(classes)), dpi=100)
    draw_matrix(axes, report, counts=True, fontsize=8)
    axes.set_title(f"confusion matrix: {report['samples']} images, accuracy {report['accuracy']:.4f}", fontsize=9)
    figure.tight_layout()
    return figure


def prefix(part: str) -> str:
    """The file names' prefix for a part: none for validation (evaluation.json, ...), test_ for the test part."""
    return "" if part == "val" else f"{part}_"


def write(report: dict, directory: Path, name_prefix: str = "") -> np.ndarray:
    """evaluation.json, confusion_matrix.csv (a header row of predicted classes) and confusion_matrix.png, each name
    after name_prefix; returns the picture (height x width x RGB), drawn once, for TensorBoard."""
    from matplotlib import image
    from matplotlib import pyplot as plt

    write_json(directory / f"{name_prefix}evaluation.json", report)
    with open(directory / f"{name_prefix}confusion_matrix.csv", "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["true \\ predicted", *report["classes"]])
        for name, row in zip(report["classes"], report["confusion_matrix"], strict=True):
            writer.writerow([name, *row])
    figure = confusion_figure(report)
    figure.canvas.draw()
    picture = np.asarray(figure.canvas.buffer_rgba())[:, :, :3].copy()
    plt.close(figure)
    image.imsave(directory / f"{name_prefix}confusion_matrix.png", picture)
    return picture
