"""The benchmark itself, for bench/run.py: the rows in the order they run, measured within the budget, and the
results in the shape bench/report.py reads. Imported once the command line has been checked (torch and timm take
seconds to import)."""

from __future__ import annotations

import os
import platform
import socket
import sys
import time
from functools import partial
from pathlib import Path

import measure
import torch
from baseline import BaselineDataset
from budget import Budget

from eurosat import manifest
from eurosat.datasets import load_splits
from eurosat.errors import UserError
from eurosat.files import list_files
from eurosat.gpu import resolve_device
from eurosat.sample import MARKER as SAMPLE_MARKER
from eurosat.sample import write_sample

REPO = Path(__file__).resolve().parents[1]
TARGET_ACCURACY = 0.948  # the articles' validation accuracy after 3 epochs
PROJECT_ROW = "project path (the default)"
BASELINE_ROW = "baseline training"
COMPILE_ROW = "with torch.compile (compile time apart)"
# Each ablation row turns one step of the project's path off (or, for compile, on).
ABLATIONS = {
    PROJECT_ROW: {},
    "per-file TIFF decoding in DataLoader workers, not the cached array": {"files": True},
    "data in host memory, copied each step, not resident on the GPU": {"data_on": "host"},
    "NCHW, not channels_last": {"channels_last": False},
    "fp16 with a gradient scaler, not bf16": {"precision": "fp16"},
    "fp32, no autocast": {"precision": "fp32"},
    "Adam the other way: fused on the CPU, not fused on a GPU": {"fused": "other"},
    "a host sync (.item()) every step, not every 10": {"sync_every": 1},
    COMPILE_ROW: {"compile": True},
}


def best(*results) -> dict:
    return max((r for r in results if r), key=lambda result: result["images_per_s"])


def wanted(switch: dict, device: torch.device, args) -> bool:
    if device.type != "cuda" and (switch.get("data_on") or switch.get("precision") == "fp16"):
        return False  # on the CPU the data is in host memory either way, and fp16 is emulated (about 20x slower)
    return not (switch.get("compile") and args.no_compile)


def accuracy_pair(bench: measure.Bench, seed: int, data_dir: Path, scratch: Path) -> dict:
    """Time to the articles' accuracy, each script in its own process from its start, on the same data."""
    args = bench.args
    common = ["--data", data_dir, "--model", args.model, "--batch-size", args.batch_size, "--epochs", args.accuracy_epochs]
    common += ["--device", bench.device.type, "--seed", seed]
    baseline = [sys.executable, REPO / "bench" / "baseline.py", *common, "--workers", args.workers]
    project = [sys.executable, manifest.load(args.project).train_script, "train", *common, "--cache-dir", scratch / "tta-cache"]
    project.append("--no-pretrained")  # from random weights, as the baseline starts
    runs = {"baseline": (baseline, scratch / f"baseline-{seed}"), "project": (project, scratch / f"runs-{seed}")}
    return {side: measure.time_to_accuracy([*cmd, "--out", out], out, TARGET_ACCURACY) for side, (cmd, out) in runs.items()}


def plan(bench: measure.Bench, data_dir: Path, scratch: Path) -> list[tuple[str, str, object]]:
    """(name, kind, measure) of every row in the order they run: the comparisons first, then the first seed's time
    to accuracy, the ablation, further seeds, and the training rows again for --repeats (the best counts)."""
    args = bench.args
    training = {
        name: ("training", partial(measure.project_training, bench, **switch))
        for name, switch in ABLATIONS.items()
        if wanted(switch, bench.device, args)
    }
    training[BASELINE_ROW] = ("training", partial(measure.baseline_training, bench))
    accuracy = [
        (f"time to accuracy, seed {seed}", "accuracy", partial(accuracy_pair, bench, seed, data_dir, scratch))
        for seed in args.accuracy_seeds
    ]
    first = [
        ("input pipeline", "pipeline", partial(measure.input_pipeline, bench)),
        (PROJECT_ROW, *training[PROJECT_ROW]),
        ("model only", "model", partial(measure.model_only, bench)),
        (BASELINE_ROW, *training[BASELINE_ROW]),
    ]
    if COMPILE_ROW in training:
        first.append((COMPILE_ROW, *training[COMPILE_ROW]))
    ablation = [(name, *row) for name, row in training.items() if name not in (PROJECT_ROW, BASELINE_ROW, COMPILE_ROW)]
    again = [(name, *row) for name, row in training.items() if name != COMPILE_ROW] * (args.repeats - 1)
    return first + accuracy[:1] + ablation + accuracy[1:] + again


SUMMARIES = {
    "training": lambda f: f"{f['images_per_s']:,.0f} images/s",
    "model": lambda f: f"{f['images_per_s']:,.0f} images/s",
    "pipeline": lambda f: f"{f['project_samples_per_s']:,.0f} samples/s, {f['speedup']:.1f}x the baseline's",
    "accuracy": lambda pair: ", ".join(f"{side} {run['finished_seconds']:.1f} s" for side, run in pair.items()),
}


def benchmark(args, scratch: Path) -> dict:
    """Every figure the budget allows; the synthetic sample, caches and runs go to `scratch`."""
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    data_dir = Path(args.data)
    try:
        synthetic = (list_files(data_dir).root / SAMPLE_MARKER).exists()  # `make data-sample` wrote it
    except UserError:
        data_dir, synthetic = scratch / "eurosat", True
        write_sample(data_dir, fraction=args.sample_fraction)

    # The project's one-time prepare, timed in a fresh cache; the split is the articles'. Every file is read once
    # first, so that the prepare and the baseline's epochs all find the files in the OS page cache: otherwise the
    # prepare alone would pay for the disk (2.0 s against 0.6 s on a 2-core VM whose files had gone cold).
    for path in list_files(data_dir).paths():
        path.read_bytes()
    start = time.perf_counter()
    splits = load_splits(data_dir, "rgb", scratch / "cache", 0.2, 42, progress=False)
    prepare_seconds = time.perf_counter() - start
    cache, rows = splits.train.cache, splits.train.rows
    baseline_data = BaselineDataset([cache.root / cache.files[j] for j in rows], cache.labels[rows].tolist())
    bench = measure.Bench(args, device, splits, baseline_data)

    measured = {}

    def keeper(name: str, kind: str):
        def keep(figures: dict) -> None:
            measured[name] = best(measured.get(name), figures) if kind == "training" else figures

        return keep

    with Budget(args.budget) as budget:
        for name, kind, row in plan(bench, data_dir, scratch):
            project_row = next((r["seconds"] for r in budget.rows if r["name"] == PROJECT_ROW), 0.0)
            estimate = project_row if kind == "training" else 0.0  # what a training row takes here
            budget.run(name, row, keeper(name, kind), estimate, SUMMARIES[kind])
    return results(args, device, measured, budget, synthetic, len(rows), prepare_seconds)


def results(args, device, measured: dict, budget: Budget, synthetic: bool, train_images: int, prepare_seconds: float) -> dict:
    """The measured rows in the results' shape; a section whose rows were not measured is left out."""
    result = {
        "machine": machine(args, device),
        "data": {"path": str(args.data), "synthetic": synthetic, "train_images": train_images},
        "settings": {
            "model": args.model,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "steps": args.steps,
            "warmup_steps": args.warmup_steps,
            "repeats": args.repeats,
            "project_precision": measured.get(PROJECT_ROW, {}).get("precision"),
        },
        "prepare_seconds": prepare_seconds,
        "budget": budget.summary(),
    }
    if "input pipeline" in measured:
        result["input_pipeline"] = {**measured["input pipeline"], "project_prepare_seconds": prepare_seconds}
    training = {side: measured[name] for side, name in (("baseline", BASELINE_ROW), ("project", PROJECT_ROW)) if name in measured}
    if len(training) == 2:
        training["speedup"] = training["project"]["images_per_s"] / training["baseline"]["images_per_s"]
    result["training"] = training
    if "model only" in measured:
        result["model_only_images_per_s"] = measured["model only"]["images_per_s"]
    result["ablation"] = {name: measured[name] for name in ABLATIONS if name in measured}
    pairs = {seed: measured.get(f"time to accuracy, seed {seed}") for seed in args.accuracy_seeds}
    pairs = {seed: pair for seed, pair in pairs.items() if pair}
    if pairs:
        seed = next(iter(pairs))
        result["time_to_accuracy"] = {
            "target": TARGET_ACCURACY,
            "prepare_seconds": prepare_seconds,
            "seed": seed,
            "baseline": pairs[seed]["baseline"],
            "project": pairs[seed]["project"],
            "final_val_acc": [
                {"seed": s, **{side: run["epochs"][-1]["val_acc"] for side, run in pair.items()}} for s, pair in pairs.items()
            ],
        }
    return result


def machine(args, device: torch.device) -> dict:
    return {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
