"""What make bench measures, one row at a time: the input pipelines, the training step (the project's path, each of
its steps switched off in turn, the articles' baseline), the model's own ceiling, and whole training scripts' time
to accuracy. Training speed is taken over a fixed number of steps after a few warm-up steps, not whole epochs, so
that a row takes seconds on a GPU; the one-time costs are in the warm-up, reported apart."""

from __future__ import annotations

import itertools
import json
import resource
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import torch
from baseline import baseline_loader, baseline_train_epoch

from eurosat import loop, recipe
from eurosat.datasets import BatchLoader, EuroSATSplits, resident_device, to_input
from eurosat.errors import UserError
from eurosat.models import build_model
from eurosat.training import autocast_dtype, seed_everything

ARTICLES = {"lr": 1e-3}  # the recipe measured: the articles' Adam (eurosat.recipe's defaults)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the whole process, on the CPU


class WaitTimer:
    """Iterates batches, adding up the samples and the seconds spent waiting for each batch."""

    def __init__(self, batches):
        self.batches, self.wait, self.samples = batches, 0.0, 0

    def __iter__(self):
        batches = iter(self.batches)
        while True:
            start = time.perf_counter()
            try:
                images, labels = next(batches)
            except StopIteration:
                return
            self.wait += time.perf_counter() - start
            self.samples += len(labels)
            yield images, labels


@dataclass
class Bench:
    """What every row shares: the settings, the device, the split, and the split loaded for the project's path."""

    args: object
    device: torch.device
    splits: EuroSATSplits
    baseline_data: object  # the baseline's per-file Dataset of the same training images
    loaders: dict = field(default_factory=dict)
    epochs: itertools.count = field(default_factory=itertools.count)  # every pass gets a fresh shuffle

    @property
    def proc(self) -> loop.Process:  # cudnn.benchmark off, as in training: same steady speed, no per-shape tuning
        return loop.Process(0, 1, self.device)

    def project_epoch(self, data_on: str = "auto") -> BatchLoader:
        if data_on not in self.loaders:  # loading the split into memory (or onto the GPU) is the one-time part
            self.loaders[data_on] = BatchLoader(
                self.splits.train,
                self.args.batch_size,
                shuffle=True,
                device=resident_device(self.splits.train, self.device, data_on),
                for_cuda=self.device.type == "cuda",
            )
        self.loaders[data_on].set_epoch(next(self.epochs))
        return self.loaders[data_on]

    def baseline_epoch(self):
        return baseline_loader(self.baseline_data, self.args.batch_size, self.args.workers, self.device)

    def fresh_model(self, channels_last: bool = True):
        seed_everything(0)
        model = build_model(self.args.model, len(self.splits.classes), 3).to(self.device)
        return model.to(memory_format=torch.channels_last) if channels_last else model


def endless(make_epoch):
    """Batches of one epoch after another."""
    for _ in itertools.count():
        yield from make_epoch()


def steady_speed(train_steps, batches, warmup_steps: int, steps: int, device: torch.device) -> dict:
    """Images/s over `steps` training steps after `warmup_steps`, clocks read after synchronising; the data-wait
    share; the warm-up's seconds (where first-shape and compile costs go)."""
    batches = endless(batches)
    start = time.perf_counter()
    train_steps(itertools.islice(batches, warmup_steps))
    synchronize(device)
    warmup_seconds = time.perf_counter() - start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = WaitTimer(itertools.islice(batches, steps))
    start = time.perf_counter()
    train_steps(timer)
    synchronize(device)
    seconds = time.perf_counter() - start
    batches.close()  # the baseline's DataLoader workers stop here
    return {
        "images_per_s": timer.samples / seconds,
        "step_seconds": seconds / steps,
        "warmup_seconds": warmup_seconds,
        "data_wait_share": timer.wait / seconds,
        "peak_memory_mb": peak_memory_mb(device),
    }


def loader_throughput(batches, device, convert) -> float:
    """Samples/s of one pass, each batch delivered to the device as the model's input."""
    seen = 0
    synchronize(device)
    start = time.perf_counter()
    for images, labels in batches:
        convert(images)
        labels.to(device, non_blocking=True)
        seen += len(labels)
    synchronize(device)
    return seen / (time.perf_counter() - start)


def input_pipeline(bench: Bench) -> dict:
    """One pass of each pipeline alone, the best of --repeats (the project's pass takes milliseconds)."""
    device, scale = bench.device, bench.splits.scale
    baseline = max(loader_throughput(bench.baseline_epoch(), device, lambda x: x.to(device)) for _ in range(bench.args.repeats))
    bench.project_epoch()  # loaded once, as train.py does before its first epoch
    project = max(
        loader_throughput(bench.project_epoch(), device, lambda x: to_input(x, scale, device)) for _ in range(bench.args.repeats)
    )
    return {
        "baseline_samples_per_s": baseline,
        "project_samples_per_s": project,
        "speedup": project / baseline,
        "baseline_epoch_seconds": len(bench.baseline_data) / baseline,
    }


def baseline_training(bench: Bench) -> dict:
    """The articles' loop on their per-file pipeline."""
    model = bench.fresh_model(channels_last=False)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler(bench.device.type, enabled=bench.device.type == "cuda")
    args = bench.args
    return steady_speed(
        lambda batches: baseline_train_epoch(model, batches, optimizer, scaler, bench.device),
        bench.baseline_epoch,
        args.warmup_steps,
        args.steps,
        bench.device,
    )


def project_training(
    bench: Bench, files=False, data_on="auto", channels_last=True, precision="auto", fused=None, sync_every=10, compile=False
) -> dict:
    """The project's training step (eurosat.loop) on its data path, or with one of its steps switched."""
    device, args = bench.device, bench.args
    model = bench.fresh_model(channels_last)
    step_model = torch.compile(model) if compile else model
    optimizer = recipe.make_optimizer(model, ARTICLES, device, device.type != "cuda" if fused == "other" else None)
    amp_dtype = autocast_dtype(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    scale = 1.0 if files else bench.splits.scale  # the baseline's dataset has already divided and clipped

    def train_steps(batches):
        loop.train_one_epoch(
            step_model, batches, optimizer, scaler, amp_dtype, scale, bench.proc, "bench",
            sync_every=sync_every, channels_last=channels_last,
        )  # fmt: skip

    batches = bench.baseline_epoch if files else partial(bench.project_epoch, data_on)
    result = steady_speed(train_steps, batches, args.warmup_steps, args.steps, device)
    result["precision"] = str(amp_dtype or torch.float32)
    if compile:  # the warm-up's extra time; near 0 when Inductor's on-disk cache already holds the graphs
        result["compile_seconds"] = max(0.0, result["warmup_seconds"] - args.warmup_steps * result["step_seconds"])
    return result


def model_only(bench: Bench) -> dict:
    """The model's ceiling: the project's training step on one batch already on the device, as train.py gets it."""
    device, args = bench.device, bench.args
    model = bench.fresh_model()
    optimizer = recipe.make_optimizer(model, ARTICLES, device)
    amp_dtype = autocast_dtype("auto", device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    images, labels = next(iter(bench.project_epoch()))
    batch = (images.to(device), labels.to(device))
    result = steady_speed(
        lambda steps: loop.train_one_epoch(model, steps, optimizer, scaler, amp_dtype, bench.splits.scale, bench.proc, "model"),
        lambda: [batch],
        args.warmup_steps,
        args.steps,
        device,
    )
    return {"images_per_s": result["images_per_s"], "warmup_seconds": result["warmup_seconds"]}


def time_to_accuracy(command: list, out: Path, target: float) -> dict:
    """Runs a training script in its own process to its end, then reads what it recorded of its own time: each
    epoch's val_acc and seconds from process start (metrics.jsonl, `elapsed_s`), and the seconds to its first step's
    start (metrics.json's timeline, `model_built_s`: data ready and model built)."""
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen([str(c) for c in command], stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        try:
            process.wait()
        finally:  # stopped by the budget or Ctrl-C: the run goes too
            if process.poll() is None:
                process.kill()
                process.wait()
        if process.returncode:
            stderr.seek(0)
            raise UserError(f"{' '.join(map(str, command))} failed:\n{stderr.read()[-2000:]}")
    (run_dir,) = {path.parent for path in out.rglob("metrics.jsonl")}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    epochs = [{"epoch": r["epoch"], "val_acc": r["val_acc"], "seconds": r["elapsed_s"]} for r in records]
    timeline = json.loads((run_dir / "metrics.json").read_text())["timeline"]
    reached = next((e for e in epochs if e["val_acc"] >= target), None)
    return {
        "startup_seconds": timeline["model_built_s"],
        "finished_seconds": timeline["finished_s"],
        "epochs": epochs,
        "seconds_to_target": reached and reached["seconds"],
        "epoch_reaching_target": reached and reached["epoch"],
    }
