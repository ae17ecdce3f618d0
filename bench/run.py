"""make bench: the articles' baseline and this project's pipeline side by side, in one process, on the same
files, model, batch size, device and threads. Writes bench/results/<host>-<date>.json and .md.

    python bench/run.py [--data data/eurosat] [--model resnet10t] [--batch-size 64] [--device auto]

Without EuroSAT in --data it writes a synthetic sample in the official format (and says so in the results).
The project's figures come from projects/eurosat-amp/train.py's own training loop and data path.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from baseline import BaselineDataset, baseline_train_epoch
from torch.utils.data import DataLoader, DistributedSampler

from eurosat.cache import prepare
from eurosat.cli import ArgumentParser, positive_int, run_cli
from eurosat.datasets import CachedDataset, to_input
from eurosat.errors import UserError
from eurosat.files import list_files
from eurosat.models import build_model
from eurosat.sample import MARKER as SAMPLE_MARKER
from eurosat.sample import write_sample
from eurosat.split import stratified_split
from eurosat.training import resolve_device, seed_everything

REPO = Path(__file__).resolve().parents[1]


def load_project_trainer():
    """projects/eurosat-amp/train.py as a module: the benchmark times its loop, not a copy of it."""
    spec = importlib.util.spec_from_file_location("eurosat_amp_train", REPO / "projects" / "eurosat-amp" / "train.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class WaitTimer:
    """Iterates a loader and adds up the seconds spent waiting for each batch."""

    def __init__(self, loader):
        self.loader, self.wait = loader, 0.0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = iter(self.loader)
        while True:
            start = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.wait += time.perf_counter() - start
            yield batch


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the whole process, on the CPU


def timed_epochs(run_epoch, loader_factory, epochs: int, warmup_epochs: int, device) -> dict:
    """Images/s over whole epochs after warm-up, clocks read after synchronising, and the data-wait share."""
    for _ in range(warmup_epochs):
        run_epoch(loader_factory())
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    images = wait = 0.0
    synchronize(device)
    start = time.perf_counter()
    for _ in range(epochs):
        timer = WaitTimer(loader_factory())
        run_epoch(timer)
        images += len(timer.loader.sampler if hasattr(timer.loader, "sampler") else timer.loader.dataset)
        wait += timer.wait
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_s": images / seconds,
        "epoch_seconds": seconds / epochs,
        "data_wait_share": wait / seconds,
        "peak_memory_mb": peak_memory_mb(device),
    }


def loader_throughput(loader, device, convert) -> float:
    """Samples/s of one pass over the loader, each batch delivered to the device as the model's input."""
    seen = 0
    synchronize(device)
    start = time.perf_counter()
    for images, labels in loader:
        convert(images)
        labels.to(device, non_blocking=True)
        seen += len(labels)
    synchronize(device)
    return seen / (time.perf_counter() - start)


def benchmark(args) -> dict:
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    trainer = load_project_trainer()
    data_dir = Path(args.data)
    scratch = Path(tempfile.mkdtemp(prefix="eurosat-bench-"))
    try:
        synthetic = (list_files(data_dir).root / SAMPLE_MARKER).exists()  # `make data-sample` wrote it
    except UserError:
        data_dir, synthetic = scratch / "eurosat", True
        write_sample(data_dir, fraction=args.sample_fraction)

    # The project's one-time prepare, timed cold in a fresh cache; the split is the articles'.
    start = time.perf_counter()
    cached = prepare(data_dir, "rgb", scratch / "cache", progress=False)
    prepare_seconds = time.perf_counter() - start
    train_idx, _ = stratified_split(cached.labels)
    paths = [cached.root / cached.files[j] for j in train_idx]
    labels = cached.labels[train_idx].tolist()
    project_data = CachedDataset(cached.path, cached.labels, train_idx)
    baseline_data = BaselineDataset(paths, labels)
    pin = device.type == "cuda"

    def baseline_loader():
        return DataLoader(baseline_data, batch_size=args.batch_size, shuffle=True, num_workers=args.workers, pin_memory=pin)

    sampler = DistributedSampler(project_data, 1, 0, shuffle=True, seed=0)

    def project_loader():
        return DataLoader(
            project_data,
            batch_size=args.batch_size,
            sampler=sampler,
            num_workers=args.workers,
            pin_memory=pin,
            persistent_workers=False,
        )

    baseline_pipe = loader_throughput(baseline_loader(), device, lambda x: x.to(device, non_blocking=True))
    project_pipe = loader_throughput(project_loader(), device, lambda x: to_input(x, cached.scale, device))

    def fresh_model(channels_last: bool):
        seed_everything(0)
        model = build_model(args.model, len(cached.classes), 3).to(device)
        return model.to(memory_format=torch.channels_last) if channels_last else model

    model = fresh_model(channels_last=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
    baseline = timed_epochs(
        lambda batches: baseline_train_epoch(model, batches, optimizer, scaler, device),
        baseline_loader,
        args.epochs,
        args.warmup_epochs,
        device,
    )

    proc = trainer.Process(0, 1, device)
    amp_dtype = trainer.resolve_precision("auto", device)
    model = fresh_model(channels_last=True)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def project_epoch(batches):
        sampler.set_epoch(sampler.epoch + 1)
        trainer.train_one_epoch(model, batches, optimizer, scaler, amp_dtype, cached.scale, proc, "bench")

    project = timed_epochs(project_epoch, project_loader, args.epochs, args.warmup_epochs, device)

    # The model's own ceiling: the same training step on batches already on the device.
    images = torch.randint(0, 4000, (args.batch_size, 3, 64, 64), dtype=torch.int32, device=device)
    targets = torch.randint(0, len(cached.classes), (args.batch_size,), device=device)
    steps = [(images, targets)] * args.model_only_steps
    trainer.train_one_epoch(model, steps[:2], optimizer, scaler, amp_dtype, cached.scale, proc, "warm-up")
    synchronize(device)
    start = time.perf_counter()
    trainer.train_one_epoch(model, steps, optimizer, scaler, amp_dtype, cached.scale, proc, "model only")
    synchronize(device)
    model_only = args.batch_size * len(steps) / (time.perf_counter() - start)

    return {
        "machine": {
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "data": {"path": str(args.data), "synthetic": synthetic, "train_images": len(train_idx)},
        "settings": {
            "model": args.model,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "epochs": args.epochs,
            "warmup_epochs": args.warmup_epochs,
            "project_precision": str(amp_dtype or torch.float32),
        },
        "input_pipeline": {
            "baseline_samples_per_s": baseline_pipe,
            "project_samples_per_s": project_pipe,
            "speedup": project_pipe / baseline_pipe,
            "project_prepare_seconds": prepare_seconds,
            "baseline_epoch_seconds": len(train_idx) / baseline_pipe,
        },
        "training": {"baseline": baseline, "project": project, "speedup": project["images_per_s"] / baseline["images_per_s"]},
        "model_only_images_per_s": model_only,
    }


def markdown(result: dict) -> str:
    pipe, train = result["input_pipeline"], result["training"]
    base, proj = train["baseline"], train["project"]
    rows = [
        ("input pipeline, samples/s", pipe["baseline_samples_per_s"], pipe["project_samples_per_s"], pipe["speedup"]),
        (
            "one-time prepare, s (baseline: one epoch of reads)",
            pipe["baseline_epoch_seconds"],
            pipe["project_prepare_seconds"],
            None,
        ),
        ("training end to end, images/s", base["images_per_s"], proj["images_per_s"], train["speedup"]),
        ("epoch, s", base["epoch_seconds"], proj["epoch_seconds"], None),
        ("data wait, % of step time", 100 * base["data_wait_share"], 100 * proj["data_wait_share"], None),
        ("peak memory, MiB", base["peak_memory_mb"], proj["peak_memory_mb"], None),
        ("model only (synthetic batches on the device), images/s", None, result["model_only_images_per_s"], None),
    ]
    fmt = lambda v: "" if v is None else f"{v:,.1f}"  # noqa: E731
    machine, settings, data = result["machine"], result["settings"], result["data"]
    lines = [
        f"{machine['gpu'] or 'CPU'} ({machine['device']}, {machine['cpus']} CPUs, {machine['threads']} threads), "
        f"torch {machine['torch']}; {settings['model']}, batch {settings['batch_size']}, {settings['workers']} workers, "
        f"{data['train_images']} train images ({'synthetic, official format' if data['synthetic'] else data['path']}), "
        f"{settings['epochs']} measured epoch(s) after {settings['warmup_epochs']} warm-up",
        "",
        "| figure | baseline | project | project / baseline |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {name} | {fmt(b)} | {fmt(p)} | {'' if r is None else f'{r:.2f}x'} |" for name, b, p, r in rows),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/eurosat"))
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--model", help="timm model (default: tf_efficientnet_b5 on a GPU, resnet10t on the CPU)")
    parser.add_argument("--batch-size", type=positive_int, help="default: 1024 on a GPU, 64 on the CPU")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers, both pipelines")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--epochs", type=positive_int, default=1, help="measured epochs")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--model-only-steps", type=positive_int, default=10)
    parser.add_argument("--sample-fraction", type=float, default=0.1, help="size of the synthetic sample")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    gpu = resolve_device(args.device).type == "cuda"
    args.model = args.model or ("tf_efficientnet_b5" if gpu else "resnet10t")
    args.batch_size = args.batch_size or (1024 if gpu else 64)
    result = benchmark(args)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{result['machine']['host']}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    stem.with_suffix(".md").write_text(table)
    print(table)
    print(f"results: {stem}.json, {stem}.md")


if __name__ == "__main__":
    np.seterr(all="ignore")
    run_cli(main)
