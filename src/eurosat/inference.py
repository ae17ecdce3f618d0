"""Evaluation and prediction with any classifier trained on the shared data pipeline."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import torch.nn.functional as F

from eurosat import evaluation
from eurosat.datasets import IGNORE_INDEX, BatchLoader, EuroSATSplits, as_tensor, load_configured_splits, to_input
from eurosat.errors import UserError
from eurosat.files import IMAGE_FORMATS, images_under
from eurosat.reading import read_image


@torch.no_grad()
def evaluate(model, loader, scale: float, device: torch.device, amp_dtype=None, classes: int = 0) -> torch.Tensor:
    """Summed loss, correct predictions and sample count over the loader (padding left out), as one tensor on the
    device; with `classes`, followed by the confusion matrix (rows: true class), flattened, so that one all-reduce
    sums all of it over the ranks."""
    model.eval()
    totals = torch.zeros(3 + classes * classes, device=device, dtype=torch.float64)
    for images, labels in loader:
        x, y = to_input(images, scale, device), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        predicted, kept = logits.argmax(1), y != IGNORE_INDEX
        totals[0] += F.cross_entropy(logits.float(), y, reduction="sum", ignore_index=IGNORE_INDEX)
        totals[1] += (predicted == y).sum()  # padding's label is never a prediction
        totals[2] += kept.sum()
        if classes:
            totals[3:] += torch.bincount(y[kept] * classes + predicted[kept], minlength=classes * classes)
    return totals


def split_totals(totals: torch.Tensor, classes: int) -> tuple[list[float], list[list[int]]]:
    """evaluate's all-reduced totals as (loss sum, correct, count) and the confusion matrix."""
    values = totals.tolist()
    matrix = [[int(v) for v in values[3 + row * classes : 3 + (row + 1) * classes]] for row in range(classes)]
    return values[:3], matrix


def check_input(path: Path, image, trained: dict) -> None:
    """An image unlike the ones the model was trained on (format, so scaling; bands in the file; size) is one line,
    never a prediction made with the wrong scaling or the wrong bands. With image None, the format alone."""
    image_format = IMAGE_FORMATS.get(Path(path).suffix.lower())
    size = f"{trained['height']}x{trained['width']}"
    expected = f"the model was trained on {size} {trained['format']} images with {trained['bands']} bands"
    if image_format != trained["format"]:
        raise UserError(f"{path} is not a {trained['format']} file: {expected}; predict with a model trained on such files")
    if image is None:
        return
    height, width, bands = image.shape
    if bands != trained["bands"] or (height, width) != (trained["height"], trained["width"]):
        raise UserError(f"{path} is {height}x{width} with {bands} bands: {expected}")


def prediction_inputs(paths: list[Path], trained: dict) -> list[Path]:
    """The files named, and the images of the trained format in the folders named (recursively), in that order."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            found = images_under(path, trained["format"])
            if not found:
                raise UserError(
                    f"{path}: no .{trained['format']} images in it or its sub-folders; the model was trained on those"
                )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


@torch.no_grad()
def predict_files(model, files: list[Path], config: dict, device, batch_size: int = 256, top: int = 3) -> list[dict]:
    """For each image file, read with the training band choice and checked against the training input: its path,
    predicted class and probability, and the `top` most likely classes with theirs. In batches."""
    model.eval()
    bands, classes = list(config["bands_resolved"]), config["classes"]
    results = []
    for first in range(0, len(files), batch_size):
        batch = []
        for path in files[first : first + batch_size]:
            check_input(path, None, config["input"])  # before reading: a file of another kind is not "corrupt"
            image = read_image(path)
            check_input(path, image, config["input"])
            batch.append(as_tensor(image[:, :, bands].transpose(2, 0, 1).copy(), device.type == "cuda"))
        probs = model(to_input(torch.stack(batch), config["scale"], device)).float().softmax(1).cpu()
        values, labels = probs.topk(min(top, len(classes)), dim=1)
        for path, value, label in zip(files[first : first + batch_size], values.tolist(), labels.tolist(), strict=True):
            ranked = [(classes[i], p) for i, p in zip(label, value, strict=True)]
            results.append({"path": Path(path), "class": ranked[0][0], "probability": ranked[0][1], "top": ranked})
    return results


def write_predictions(results: list[dict], output: Path) -> None:
    """path,class,probability and the top classes as CSV, written whole or not at all."""
    top = len(results[0]["top"])
    header = ["path", "class", "probability"] + [
        f"{kind}_{rank}" for rank in range(1, top + 1) for kind in ("class", "probability")
    ]
    partial = output.with_name(f".{output.name}.partial")
    try:
        with open(partial, "w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(header)
            for result in results:
                ranked = [value for name, p in result["top"] for value in (name, f"{p:.6f}")]
                writer.writerow([str(result["path"]), result["class"], f"{result['probability']:.6f}", *ranked])
        partial.replace(output)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise UserError(f"--output {output}: cannot write it ({exc.strerror}); pick a writable path") from None


def check_classes(given, trained, data_dir) -> None:
    """Labels are positions in the sorted class list, so data with another set of classes would shift them: refuse it.
    (The same names always come in the same, sorted, order.)"""
    if list(given) != list(trained):
        missing = ", ".join(c for c in trained if c not in given) or "none"
        extra = ", ".join(c for c in given if c not in trained) or "none"
        raise UserError(
            f"--data {data_dir}: its classes are not the ones the model was trained on (missing: {missing}; extra: "
            f"{extra}); evaluate on data with the model's {len(trained)} classes"
        )


PART_NAMES = {"val": "validation", "test": "test"}


def evaluate_split(model, data: EuroSATSplits, device, batch_size: int, part: str = "val") -> dict:
    """The model on the whole validation (or test) part, in this one process (every image once): val_loss, val_acc,
    val_samples (test_...) and eurosat.evaluation's class report."""
    subset = getattr(data, part)
    loader = BatchLoader(subset, batch_size, shuffle=False, for_cuda=device.type == "cuda")
    targets, predicted, loss_sum = evaluation.predictions(model, loader, data.scale, device)
    report = evaluation.class_report(targets, predicted, list(data.classes))
    figures = {"loss": loss_sum / report["samples"], "acc": report["accuracy"], "samples": report["samples"]}
    return {"part": part, **{f"{part}_{name}": value for name, value in figures.items()}, **report}


def report_evaluation(result: dict, directory: Path):
    """Print the class table and write evaluation.json, confusion_matrix.csv and confusion_matrix.png (test_... for
    the test part); returns the matrix as an RGB array."""
    print(evaluation.table(result))
    prefix = evaluation.prefix(result["part"])
    picture = evaluation.write(result, directory, prefix)
    files = [f"{prefix}{name}" for name in evaluation.FILES]
    print(f"{prefix.replace('_', ' ')}evaluation: {directory / files[0]}, {', '.join(files[1:])}", flush=True)
    return picture


def evaluate_command(model, run_config: dict, args, device) -> dict:
    """The `evaluate` sub-command: the run's validation (or test) part, or the same part of another --data folder."""
    config = {**run_config, "data": args.data or run_config["data"], "cache_dir": args.cache_dir or run_config["cache_dir"]}
    data = load_configured_splits(config)
    check_classes(data.classes, run_config["classes"], config["data"])
    if getattr(data, args.part) is None:
        raise UserError(
            f"--split test: {args.checkpoint}'s run has no test part; train with --split torchgeo or --test-fraction F"
        )
    result = evaluate_split(model, data, device, args.batch_size, args.part)
    result = {"checkpoint": str(args.checkpoint), "data": str(config["data"]), **result}
    part = args.part
    print(
        f"{part}_loss {result[f'{part}_loss']:.4f} {part}_acc {result[f'{part}_acc']:.4f} on {result[f'{part}_samples']} "
        f"{PART_NAMES[part]} images of {config['data']}"
    )
    out = args.out or Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    report_evaluation(result, out)
    return result


def predict_command(model, args, config: dict, device) -> list[dict]:
    """The `predict` sub-command: files and folders; one `file<TAB>class<TAB>probability` line per image, or with
    --output a CSV of them with the top classes."""
    results = predict_files(model, prediction_inputs(args.paths, config["input"]), config, device, args.batch_size)
    if args.output:
        write_predictions(results, args.output)
        print(f"predictions: {len(results)} images -> {args.output}")
    else:
        for result in results:
            print(f"{result['path']}\t{result['class']}\t{result['probability']:.4f}")
    return results
