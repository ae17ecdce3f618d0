"""make bench: the articles' baseline and this project's training path side by side, in one process tree, on
the same files, model, batch size, device and threads. Writes bench/results/<host>-<date>.json, .md and .png.

    python bench/run.py [--data data/eurosat] [--model resnet10t] [--batch-size 64] [--device auto]

Without EuroSAT in --data it writes a synthetic sample in the official format (and says so in the results).
The project's figures come from the pure PyTorch loop (eurosat.loop: its data path, its training step) and, for
the time to accuracy, from --project's whole train.py in its own process (default: the default project).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from baseline import BaselineDataset, baseline_loader, baseline_train_epoch

from eurosat import loop, manifest
from eurosat.cli import ArgumentParser, positive_int, run_cli
from eurosat.datasets import BatchLoader, load_splits, resident_device, to_input
from eurosat.errors import UserError
from eurosat.files import list_files
from eurosat.gpu import resolve_device
from eurosat.models import build_model
from eurosat.sample import MARKER as SAMPLE_MARKER
from eurosat.sample import write_sample
from eurosat.training import autocast_dtype, seed_everything

REPO = Path(__file__).resolve().parents[1]
TARGET_ACCURACY = 0.948  # the articles' validation accuracy after 3 epochs

# Each ablation row turns one step of the project's path off (or, for compile, on).
ABLATIONS = {
    "project path (the default)": {},
    "per-file TIFF decoding in DataLoader workers, not the cached array": {"files": True},
    "data in host memory, copied each step, not resident on the GPU": {"data_on": "host"},
    "NCHW, not channels_last": {"channels_last": False},
    "fp16 with a gradient scaler, not bf16": {"precision": "fp16"},
    "fp32, no autocast": {"precision": "fp32"},
    "Adam the other way: fused on the CPU, not fused on a GPU": {"fused": "other"},
    "a host sync (.item()) every step, not every 10": {"sync_every": 1},
    "with torch.compile (compile time apart)": {"compile": True},
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class WaitTimer:
    """Iterates batches, adding up the samples and the seconds spent waiting for each batch."""

    def __init__(self, batches):
        self.batches, self.wait, self.samples = batches, 0.0, 0

    def __len__(self) -> int:
        return len(self.batches)

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


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the whole process, on the CPU


def timed_epochs(run_epoch, batches_factory, epochs: int, warmup_epochs: int, device) -> dict:
    """Images/s over whole epochs after warm-up, clocks read after synchronising, and the data-wait share."""
    warmup_start = time.perf_counter()
    for _ in range(warmup_epochs):
        run_epoch(batches_factory())
    synchronize(device)
    warmup_seconds = time.perf_counter() - warmup_start
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    images = wait = 0.0
    start = time.perf_counter()
    for _ in range(epochs):
        timer = WaitTimer(batches_factory())
        run_epoch(timer)
        images += timer.samples
        wait += timer.wait
    synchronize(device)
    seconds = time.perf_counter() - start
    return {
        "images_per_s": images / seconds,
        "epoch_seconds": seconds / epochs,
        "warmup_seconds": warmup_seconds,
        "data_wait_share": wait / seconds,
        "peak_memory_mb": peak_memory_mb(device),
    }


def best(results) -> dict:
    return max(results, key=lambda result: result["images_per_s"])


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


def time_to_accuracy(command: list, out: Path, target: float) -> dict:
    """Runs a training script in its own process and follows the metrics.jsonl it writes under `out`: seconds from
    its start to training (the file appears: data ready, model built) and to each epoch's record."""
    start = time.perf_counter()
    epochs, startup = [], None
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen([str(c) for c in command], stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        while True:
            finished = process.poll() is not None  # read once more after the end, for the last record
            for path in out.rglob("metrics.jsonl"):
                startup = startup or time.perf_counter() - start
                for line in path.read_text().splitlines()[len(epochs) :]:
                    record = json.loads(line)
                    epochs.append(
                        {"epoch": record["epoch"], "val_acc": record["val_acc"], "seconds": time.perf_counter() - start}
                    )
            if finished:
                break
            time.sleep(0.02)
        if process.returncode:
            stderr.seek(0)
            raise UserError(f"{' '.join(map(str, command))} failed:\n{stderr.read()[-2000:]}")
    reached = next((e for e in epochs if e["val_acc"] >= target), None)
    return {
        "startup_seconds": startup,
        "epochs": epochs,
        "seconds_to_target": reached and reached["seconds"],
        "epoch_reaching_target": reached and reached["epoch"],
    }


def benchmark(args, scratch: Path) -> dict:
    """Every figure; the synthetic sample, caches and runs go to `scratch`."""
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
    proc = loop.Process(0, 1, device)  # cudnn.benchmark off, as in training: same steady speed, no per-shape autotuning

    epochs, loaders = itertools.count(), {}  # every pass gets a fresh shuffle, as in training

    def project_batches(data_on="auto"):
        if data_on not in loaders:  # loading the split into memory (or onto the GPU) is the one-time part
            loaders[data_on] = BatchLoader(
                splits.train,
                args.batch_size,
                shuffle=True,
                device=resident_device(splits.train, device, data_on),
                for_cuda=device.type == "cuda",
            )
        loaders[data_on].set_epoch(next(epochs))
        return loaders[data_on]

    # 1. The input pipeline alone: the best of three epochs each (the project's epoch takes milliseconds).
    baseline_pipe = max(
        loader_throughput(baseline_loader(baseline_data, args.batch_size, args.workers, device), device, lambda x: x.to(device))
        for _ in range(3)
    )
    project_batches()  # loaded once, as train.py does before its first epoch
    project_pipe = max(loader_throughput(project_batches(), device, lambda x: to_input(x, cache.scale, device)) for _ in range(3))

    def fresh_model(channels_last: bool = True):
        seed_everything(0)
        model = build_model(args.model, len(cache.classes), 3).to(device)
        return model.to(memory_format=torch.channels_last) if channels_last else model

    # 2. The baseline's training loop, end to end (best of --repeats, like every training figure).
    def baseline_run():
        model = fresh_model(channels_last=False)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")
        return timed_epochs(
            lambda batches: baseline_train_epoch(model, batches, optimizer, scaler, device),
            lambda: baseline_loader(baseline_data, args.batch_size, args.workers, device),
            args.epochs,
            args.warmup_epochs,
            device,
        )

    baseline = best(baseline_run() for _ in range(args.repeats))

    # 4. The project's path, then each of its steps switched off in turn (row 1 is figure 2's project column).
    def project_run(files=False, data_on="auto", channels_last=True, precision="auto", fused=None, sync_every=10, compile=False):
        model = fresh_model(channels_last)
        step_model = torch.compile(model) if compile else model
        optimizer = loop.make_optimizer(model, 1e-3, device, device.type != "cuda" if fused == "other" else None)
        amp_dtype = autocast_dtype(precision, device)
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
        scale = 1.0 if files else cache.scale  # the baseline's dataset has already divided and clipped

        def epoch(batches):
            loop.train_one_epoch(
                step_model, batches, optimizer, scaler, amp_dtype, scale, proc, "bench",
                sync_every=sync_every, channels_last=channels_last,
            )  # fmt: skip

        if files:
            batches = lambda: baseline_loader(baseline_data, args.batch_size, args.workers, device)  # noqa: E731
        else:
            batches = lambda: project_batches(data_on)  # noqa: E731
        result = timed_epochs(epoch, batches, args.epochs, max(args.warmup_epochs, 1 if compile else 0), device)
        result["precision"] = str(amp_dtype or torch.float32)
        if compile:  # the first epoch's extra time; near 0 when Inductor's on-disk cache already holds the graphs
            result["compile_seconds"] = max(0.0, result["warmup_seconds"] - result["epoch_seconds"])
        return model, optimizer, scaler, amp_dtype, result

    ablations = {}
    for _ in range(args.repeats):  # round robin, so that a slow spell of the machine hits every row alike
        for name, switch in ABLATIONS.items():
            if device.type != "cuda" and (switch.get("data_on") or switch.get("precision") == "fp16"):
                continue  # on the CPU the data is in host memory either way, and fp16 is emulated (about 20x slower)
            if switch.get("compile") and args.no_compile:
                continue
            print(f"ablation: {name}", file=sys.stderr, flush=True)
            run = project_run(**switch)
            ablations[name] = best([ablations[name], run[-1]] if name in ablations else [run[-1]])
            if not switch:
                model, optimizer, scaler, amp_dtype, _ = run
    project = ablations["project path (the default)"]

    # 3. The model's own ceiling: the same training step on one batch already on the device, as train.py gets it.
    images, targets = next(iter(project_batches()))
    steps = [(images.to(device), targets.to(device))] * args.model_only_steps
    loop.train_one_epoch(model, steps[:2], optimizer, scaler, amp_dtype, cache.scale, proc, "warm-up")
    synchronize(device)
    start = time.perf_counter()
    loop.train_one_epoch(model, steps, optimizer, scaler, amp_dtype, cache.scale, proc, "model only")
    synchronize(device)
    model_only = args.batch_size * len(steps) / (time.perf_counter() - start)

    # 5. Time to the articles' accuracy, each script in its own process from its start, on the same data; each
    # further seed repeats both runs, since one seed on a small sample cannot tell noise from a loss of accuracy.
    common = ["--data", data_dir, "--model", args.model, "--batch-size", args.batch_size, "--epochs", args.accuracy_epochs]
    common += ["--device", device.type]
    runs = {
        seed: {
            "baseline": time_to_accuracy(
                [sys.executable, REPO / "bench" / "baseline.py", *common, "--seed", seed, "--workers", args.workers]
                + ["--out", scratch / f"baseline-{seed}"],
                scratch / f"baseline-{seed}",
                TARGET_ACCURACY,
            ),
            "project": time_to_accuracy(
                [sys.executable, manifest.load(args.project).train_script, "train", *common, "--seed", seed]
                + ["--out", scratch / f"runs-{seed}", "--cache-dir", scratch / "tta-cache"],
                scratch / f"runs-{seed}",
                TARGET_ACCURACY,
            ),
        }
        for seed in args.accuracy_seeds
    }
    accuracy = {
        "seed": args.accuracy_seeds[0],
        **runs[args.accuracy_seeds[0]],
        "final_val_acc": [
            {"seed": seed, **{side: run["epochs"][-1]["val_acc"] for side, run in pair.items()}} for seed, pair in runs.items()
        ],
    }

    return {
        "machine": {
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "threads": args.threads,
            "device": str(device),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
        },
        "data": {"path": str(args.data), "synthetic": synthetic, "train_images": len(rows)},
        "settings": {
            "model": args.model,
            "batch_size": args.batch_size,
            "workers": args.workers,
            "epochs": args.epochs,
            "warmup_epochs": args.warmup_epochs,
            "repeats": args.repeats,
            "project_precision": project["precision"],
        },
        "input_pipeline": {
            "baseline_samples_per_s": baseline_pipe,
            "project_samples_per_s": project_pipe,
            "speedup": project_pipe / baseline_pipe,
            "project_prepare_seconds": prepare_seconds,
            "baseline_epoch_seconds": len(rows) / baseline_pipe,
        },
        "training": {"baseline": baseline, "project": project, "speedup": project["images_per_s"] / baseline["images_per_s"]},
        "model_only_images_per_s": model_only,
        "ablation": ablations,
        "time_to_accuracy": {"target": TARGET_ACCURACY, "prepare_seconds": prepare_seconds, **accuracy},
    }


def _fmt(value, digits: int = 1) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


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
    machine, settings, data = result["machine"], result["settings"], result["data"]
    source = "synthetic, official format" if data["synthetic"] else data["path"]
    lines = [
        f"{machine['gpu'] or 'CPU'} ({machine['device']}, {machine['cpus']} CPUs, {machine['threads']} threads), "
        f"torch {machine['torch']}; {settings['model']}, batch {settings['batch_size']}, {settings['workers']} workers "
        f"(baseline), {data['train_images']} train images ({source}), "
        f"{settings['epochs']} measured epoch(s) after {settings['warmup_epochs']} warm-up, best of {settings['repeats']}; "
        f"project precision "
        f"{settings['project_precision']}",
        "",
        "| figure | baseline | project | project / baseline |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {name} | {_fmt(b)} | {_fmt(p)} | {'' if r is None else f'{r:.2f}x'} |" for name, b, p, r in rows),
        "",
        "| ablation: the project's path with | images/s | vs the project path | data wait, % |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, figures in result["ablation"].items():
        extra = f" (first epoch, compiling: {figures['warmup_seconds']:.1f} s)" if "compile_seconds" in figures else ""
        lines.append(
            f"| {name}{extra} | {_fmt(figures['images_per_s'])} | {figures['images_per_s'] / proj['images_per_s']:.2f}x "
            f"| {_fmt(100 * figures['data_wait_share'])} |"
        )
    accuracy = result["time_to_accuracy"]
    lines += [
        "",
        f"| time to {accuracy['target']:.1%} validation accuracy, from process start | baseline | project |",
        "| --- | ---: | ---: |",
        f"| seconds (epoch reaching it) | {_reached(accuracy['baseline'])} | {_reached(accuracy['project'])} |",
        f"| start-up before the first step, s | {_fmt(accuracy['baseline']['startup_seconds'])} "
        f"| {_fmt(accuracy['project']['startup_seconds'])} (one-time prepare {accuracy['prepare_seconds']:.1f} s of it) |",
    ]
    for i, (b, p) in enumerate(zip(accuracy["baseline"]["epochs"], accuracy["project"]["epochs"], strict=True)):
        lines.append(f"| val_acc after epoch {i + 1} (seed {accuracy['seed']}) | {b['val_acc']:.4f} | {p['val_acc']:.4f} |")
    finals = accuracy["final_val_acc"]
    if len(finals) > 1:
        last = len(accuracy["baseline"]["epochs"])
        for f in finals[1:]:
            lines.append(f"| val_acc after epoch {last}, seed {f['seed']} | {f['baseline']:.4f} | {f['project']:.4f} |")
        for name, pick in (("mean", np.mean), ("lowest", np.min)):
            figures = [pick([f[side] for f in finals]) for side in ("baseline", "project")]
            lines.append(f"| {name} over the {len(finals)} seeds | {figures[0]:.4f} | {figures[1]:.4f} |")
    return "\n".join(lines) + "\n"


def _reached(run: dict) -> str:
    if run["seconds_to_target"] is None:
        return f"not reached in {len(run['epochs'])} epochs"
    return f"{run['seconds_to_target']:.1f} (epoch {run['epoch_reaching_target']})"


def chart(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    pipe, train = result["input_pipeline"], result["training"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5), gridspec_kw={"width_ratios": [1, 2.4]})
    left.bar(["baseline", "project"], [pipe["baseline_samples_per_s"], pipe["project_samples_per_s"]], color=["grey", "tab:blue"])
    left.set_yscale("log")
    left.set_title(f"input pipeline, samples/s ({pipe['speedup']:.0f}x)")
    names = ["baseline", *result["ablation"], "model only (ceiling)"]
    values = [
        train["baseline"]["images_per_s"],
        *(r["images_per_s"] for r in result["ablation"].values()),
        result["model_only_images_per_s"],
    ]
    colors = ["grey", "tab:blue", *["tab:orange"] * (len(names) - 3), "tab:green"]
    right.barh(names[::-1], values[::-1], color=colors[::-1])
    right.set_title("training end to end, images/s")
    right.tick_params(axis="y", labelsize=8)
    machine = result["machine"]
    fig.suptitle(f"{machine['gpu'] or 'CPU'}, {result['settings']['model']}, batch {result['settings']['batch_size']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def seed_list(text: str) -> list[int]:
    try:
        seeds = [int(seed) for seed in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError("use comma-separated integers such as 42,1,2") from None
    if len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError("a seed is listed twice")
    return seeds


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/eurosat"))
    parser.add_argument("--project", help="the project whose train.py the time-to-accuracy runs use (default: the default)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--model", help="timm model (default: tf_efficientnet_b5 on a GPU, resnet10t on the CPU)")
    parser.add_argument("--batch-size", type=positive_int, help="default: 1024 on a GPU, 64 on the CPU")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="the baseline's DataLoader workers")
    parser.add_argument("--threads", type=positive_int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--epochs", type=positive_int, default=1, help="measured epochs")
    parser.add_argument("--warmup-epochs", type=int, default=1)
    parser.add_argument("--repeats", type=positive_int, default=2, help="training figures: the best of this many runs")
    parser.add_argument("--model-only-steps", type=positive_int, default=10)
    parser.add_argument("--accuracy-epochs", type=positive_int, default=3, help="epochs of the time-to-accuracy runs")
    parser.add_argument(
        "--accuracy-seeds", type=seed_list, default=[42], help="seeds of the time-to-accuracy runs, e.g. 42,1,2 (default: 42)"
    )
    parser.add_argument("--no-compile", action="store_true", help="leave out the torch.compile ablation row")
    parser.add_argument("--sample-fraction", type=float, default=0.1, help="size of the synthetic sample")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)
    args.project = manifest.load(args.project or manifest.default_project()).name  # a bad --project stops here, not after
    gpu = resolve_device(args.device).type == "cuda"
    args.model = args.model or ("tf_efficientnet_b5" if gpu else "resnet10t")
    args.batch_size = args.batch_size or (1024 if gpu else 64)
    with tempfile.TemporaryDirectory(prefix="eurosat-bench-") as scratch:
        result = benchmark(args, Path(scratch))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"{result['machine']['host']}-{time.strftime('%Y%m%d-%H%M%S')}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    stem.with_suffix(".md").write_text(table)
    chart(result, stem.with_suffix(".png"))
    print(table)
    print(f"results: {stem}.json, {stem}.md, {stem}.png")


if __name__ == "__main__":
    np.seterr(all="ignore")
    run_cli(main)
