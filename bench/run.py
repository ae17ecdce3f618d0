"""make bench: the articles' baseline and this project's training path side by side, in one process tree, on
the same files, model, batch size, device and threads. Writes bench/results/<host>-<date>.json, .md and .png.

    python bench/run.py [--data data/eurosat] [--device auto] [--budget SECONDS] [--model ...] [--batch-size ...]

Rows are measured one after another, most telling first, each printed with its seconds as it finishes, while
--budget lasts (defaults: 180 s on a GPU, 1200 s on the CPU); what does not fit is named in the results, and Ctrl-C
writes what was measured. Without EuroSAT in --data it writes a synthetic sample in the official format (and says
so). The project's figures come from the pure PyTorch loop (eurosat.loop: its data path, its training step) and,
for the time to accuracy, from --project's whole train.py in its own process (default: the default project).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from eurosat import manifest
from eurosat.cli import ArgumentParser, positive_int, run_cli

REPO = Path(__file__).resolve().parents[1]
# Defaults that differ by device: a GPU run fits in a few minutes, a CPU run measures a small model longer
DEFAULTS = {
    "cuda": {"model": "tf_efficientnet_b5", "batch_size": 1024, "steps": 20, "repeats": 1, "budget": 180.0},
    "cpu": {"model": "resnet10t", "batch_size": 64, "steps": 30, "repeats": 2, "budget": 1200.0},
}


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("use comma-separated integers such as 42,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError("a seed is listed twice")
    return seeds


def positive_seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0 or seconds == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/eurosat"))
    parser.add_argument("--project", help="the project whose train.py the time-to-accuracy runs use (default: the default)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--budget", type=positive_seconds, help="seconds for all rows (default: 180 on a GPU, 1200 on the CPU)")
    parser.add_argument("--model", help="timm model (default: tf_efficientnet_b5 on a GPU, resnet10t on the CPU)")
    parser.add_argument("--batch-size", type=positive_int, help="default: 1024 on a GPU, 64 on the CPU")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="the baseline's DataLoader workers")
    parser.add_argument("--threads", type=positive_int, help="torch CPU threads (default: torch's, one per core)")
    parser.add_argument("--steps", type=positive_int, help="measured training steps a row (default: 20 on a GPU, 30 on the CPU)")
    parser.add_argument("--warmup-steps", type=positive_int, default=3, help="steps before the clock starts (default: 3)")
    parser.add_argument("--repeats", type=positive_int, help="training rows: the best of this many (default: GPU 1, CPU 2)")
    parser.add_argument("--accuracy-epochs", type=positive_int, default=3, help="epochs of the time-to-accuracy runs")
    parser.add_argument(
        "--accuracy-seeds", type=seed_list, default=[42], help="seeds of the time-to-accuracy runs, e.g. 42,1,2 (default: 42)"
    )
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile ablation row")
    parser.add_argument("--sample-fraction", type=float, default=0.1, help="size of the synthetic sample")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    args.project = manifest.load(args.project or manifest.default_project()).name  # a bad --project stops here, not after
    import numpy as np  # the benchmark's modules import torch and timm: only once the command line is known good
    import suite
    import torch
    from report import chart, markdown

    np.seterr(all="ignore")
    args.threads = args.threads or torch.get_num_threads()
    for name, value in DEFAULTS[suite.resolve_device(args.device).type].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    with tempfile.TemporaryDirectory(prefix="eurosat-bench-") as scratch:
        result = suite.benchmark(args, Path(scratch))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{result['machine']['host']}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    stem.with_suffix(".md").write_text(table)
    chart(result, stem.with_suffix(".png"))
    print(table)
    print(f"results: {stem}.json, {stem}.md, {stem}.png")
    if result["budget"]["stopped"] == "interrupted":
        sys.exit(130)


if __name__ == "__main__":
    run_cli(main)
