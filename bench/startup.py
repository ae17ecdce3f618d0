"""Where a run's start-up goes, phase by phase, from process start to a model ready on the device: the calls
train.py makes before its first step, each timed, in a fresh process (so that the imports are counted too), and
then that process's exit.

    python bench/startup.py --data data/eurosat [--device auto] [--model tf_efficientnet_b5] [--out FILE.json]

The decoded-image cache is built first if it is missing (not counted: a run pays that once); every phase after is
what each later run pays. make gpu-check runs it and puts the phases in its report.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def profile(data: Path, model_name: str, device_name: str, cache_dir: Path | None) -> list[tuple[str, float]]:
    """In this process: (phase, seconds) in the order train.py meets them; the first is the interpreter's own start."""
    from eurosat.timeline import since_start

    phases, last = [("interpreter start", since_start())], since_start()

    def done(name: str) -> None:
        nonlocal last
        now = since_start()
        phases.append((name, now - last))
        last = now

    import torch

    done("import torch")
    import timm  # noqa: F401

    done("import timm")
    from eurosat import lifecycle  # noqa: F401  (what train.py imports besides: the lifecycle, tensorboard, ...)

    done("import the lifecycle")
    from eurosat.cache import prepare
    from eurosat.datasets import BatchLoader, CachedSubset, resident_device
    from eurosat.gpu import resolve_device
    from eurosat.models import build_model
    from eurosat.split import split_rows

    device = resolve_device(device_name)
    if device.type == "cuda":
        torch.zeros(1, device=device)  # CUDA's start-up
    done(f"device ready ({device.type})")
    timings: dict[str, float] = {}
    cache = prepare(data, "rgb", cache_dir, progress=False, timings=timings)  # built before this process if missing
    phases += list(timings.items())
    last = since_start()
    rows = split_rows(cache.labels, cache.files, data, "articles", 0.2, 0.0, 42, sample=False)
    done(f"split {len(cache.files):,} images")
    model = build_model(model_name, len(cache.classes), len(cache.bands))
    done(f"build {model_name}")
    model.to(device, memory_format=torch.channels_last)
    done("model to the device")
    train, val = CachedSubset(cache, rows["train"]), CachedSubset(cache, rows["val"])
    resident = resident_device(train, device)
    for subset, shuffle in ((train, True), (val, False)):
        BatchLoader(subset, 1024, shuffle=shuffle, device=resident, for_cuda=device.type == "cuda")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    done(f"train and val images into {'GPU' if resident else 'host'} memory")
    return phases


def main(argv=None) -> None:
    from eurosat.cli import ArgumentParser, run_cli

    def command(argv):
        parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("--data", type=Path, default=Path("data/eurosat"))
        parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
        parser.add_argument("--model", default="tf_efficientnet_b5")
        parser.add_argument("--cache-dir", type=Path)
        parser.add_argument("--out", type=Path, help="also write the phases as JSON here")
        parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
        args = parser.parse_args(argv)
        if args.child:
            print(json.dumps(profile(args.data, args.model, args.device, args.cache_dir)), flush=True)
            return
        from eurosat.cache import prepare

        prepare(args.data, "rgb", args.cache_dir, progress=False)  # a missing cache is built here, outside the profile
        child = [sys.executable, __file__, "--child", "--data", args.data, "--device", args.device, "--model", args.model]
        child += ["--cache-dir", args.cache_dir] if args.cache_dir else []
        with subprocess.Popen([str(c) for c in child], stdout=subprocess.PIPE, text=True) as process:
            phases = json.loads(process.stdout.readline())
            printed = time.perf_counter()
            process.wait()
            exit_s = time.perf_counter() - printed  # what every run pays after its last line, too
        if process.returncode:
            raise subprocess.CalledProcessError(process.returncode, child)
        for name, seconds in phases:
            print(f"{seconds:7.2f} s  {name}")
        print(f"{sum(s for _, s in phases):7.2f} s  in all, from process start")
        print(f"{exit_s:7.2f} s  then the process's exit, after its last line")
        if args.out:
            args.out.write_text(json.dumps({"model": args.model, "phases": phases, "exit_s": exit_s}, indent=2) + "\n")

    run_cli(command, argv)


if __name__ == "__main__":
    main()
