"""Evaluation and prediction with any classifier trained on the shared data pipeline."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from eurosat import evaluation
from eurosat.datasets import IGNORE_INDEX, BatchLoader, EuroSATSplits, as_tensor, load_configured_splits, to_input
from eurosat.errors import UserError
from eurosat.files import IMAGE_FORMATS
from eurosat.reading import read_image


@torch.no_grad()
def evaluate(model, loader, scale: float, device: torch.device, amp_dtype=None) -> torch.Tensor:
    """Summed loss, correct predictions and sample count over the loader (padding left out), as one tensor on the device."""
    model.eval()
    totals = torch.zeros(3, device=device, dtype=torch.float64)
    for images, labels in loader:
        x, y = to_input(images, scale, device), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        totals[0] += F.cross_entropy(logits.float(), y, reduction="sum", ignore_index=IGNORE_INDEX)
        totals[1] += (logits.argmax(1) == y).sum()  # padding's label is never a prediction
        totals[2] += (y != IGNORE_INDEX).sum()
    return totals


def check_input(path: Path, image, trained: dict) -> None:
    """An image unlike the ones the model was trained on (format, so scaling; bands in the file; size) is one line,
    never a prediction made with the wrong scaling or the wrong bands."""
    image_format = IMAGE_FORMATS.get(Path(path).suffix.lower())
    height, width, bands = image.shape
    size = f"{trained['height']}x{trained['width']}"
    expected = f"the model was trained on {size} {trained['format']} images with {trained['bands']} bands"
    if image_format != trained["format"]:
        raise UserError(f"{path} is not a {trained['format']} file: {expected}; predict with a model trained on such files")
    if bands != trained["bands"] or (height, width) != (trained["height"], trained["width"]):
        raise UserError(f"{path} is {height}x{width} with {bands} bands: {expected}")


@torch.no_grad()
def predict_files(model, files: list[Path], config: dict, device) -> list[tuple[Path, str, float]]:
    """(file, predicted class, probability) for each image file, read with the training band choice."""
    model.eval()
    bands, classes = config["bands_resolved"], config["classes"]
    results = []
    for path in files:
        if not Path(path).is_file():
            raise UserError(f"{path}: no such file")
        image = read_image(path)
        check_input(path, image, config["input"])
        x = as_tensor(image[:, :, list(bands)].transpose(2, 0, 1).copy(), device.type == "cuda")[None]
        probs = model(to_input(x, config["scale"], device)).float().softmax(1)[0]
        label = int(probs.argmax())
        results.append((Path(path), classes[label], float(probs[label])))
    return results


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


def evaluate_split(model, data: EuroSATSplits, device, batch_size: int) -> dict:
    """The model on the whole validation split, in this one process (every image once): val_loss, val_acc,
    val_samples and eurosat.evaluation's class report."""
    loader = BatchLoader(data.val, batch_size, shuffle=False, for_cuda=device.type == "cuda")
    targets, predicted, loss_sum = evaluation.predictions(model, loader, data.scale, device)
    report = evaluation.class_report(targets, predicted, list(data.classes))
    return {"val_loss": loss_sum / report["samples"], "val_acc": report["accuracy"], "val_samples": report["samples"], **report}


def report_evaluation(result: dict, directory: Path):
    """Print the class table and write evaluation.json, confusion_matrix.csv and confusion_matrix.png (returned as
    an RGB array)."""
    print(evaluation.table(result))
    picture = evaluation.write(result, directory)
    print(f"evaluation: {directory / 'evaluation.json'}, {', '.join(evaluation.FILES[1:])}", flush=True)
    return picture


def evaluate_command(model, run_config: dict, args, device) -> dict:
    """The `evaluate` sub-command: the run's validation split, or the same split of another --data folder."""
    config = {**run_config, "data": args.data or run_config["data"], "cache_dir": args.cache_dir or run_config["cache_dir"]}
    data = load_configured_splits(config)
    check_classes(data.classes, run_config["classes"], config["data"])
    result = evaluate_split(model, data, device, args.batch_size)
    result = {"checkpoint": str(args.checkpoint), "data": str(config["data"]), **result}
    print(
        f"val_loss {result['val_loss']:.4f} val_acc {result['val_acc']:.4f} on {result['val_samples']} validation images of "
        f"{config['data']}"
    )
    out = args.out or Path(args.checkpoint).parent
    out.mkdir(parents=True, exist_ok=True)
    report_evaluation(result, out)
    return result


def predict_command(model, files, config: dict, device) -> list:
    """The `predict` sub-command: one `file<TAB>class<TAB>probability` line per file."""
    results = predict_files(model, files, config, device)
    for path, label, probability in results:
        print(f"{path}\t{label}\t{probability:.4f}")
    return results
