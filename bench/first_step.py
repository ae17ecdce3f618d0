"""The first training step, per way of running the depthwise convolutions: for the default model, batch size and
precision, each layout of eurosat.conv_layout in a fresh process (so that no execution plan is cached yet): the
first step's seconds (forward, backward and optimizer step, synchronised) and the steady images/s after it.

    python bench/first_step.py [--device cuda] [--model tf_efficientnet_b5] [--batch-size 1024] [--out FILE.json]

It prints one row a layout and, with --out, writes them as JSON; make gpu-check runs it and puts the rows in its
report. On a GPU it takes under a minute; on the CPU it runs too (cuDNN is not involved there).
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

from eurosat.cli import ArgumentParser, positive_int, run_cli  # noqa: E402
from eurosat.conv_layout import LAYOUTS  # noqa: E402


def measure(layout: str, model_name: str, batch_size: int, precision: str, device_name: str, steps: int) -> dict:
    """One layout, in this process: the first step's seconds and the steady images/s of `steps` more."""
    import torch
    import torch.nn.functional as F

    from eurosat.conv_layout import apply_layout, model_input_format
    from eurosat.gpu import resolve_device
    from eurosat.models import build_model
    from eurosat.training import autocast_dtype, set_matmul_precision

    device = resolve_device(device_name)
    set_matmul_precision(device)
    torch.manual_seed(0)
    model = apply_layout(build_model(model_name, 10, 3).to(device), layout).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    amp_dtype = autocast_dtype(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    images = torch.rand(batch_size, 3, 64, 64, device=device).contiguous(memory_format=model_input_format(layout))
    labels = torch.randint(0, 10, (batch_size,), device=device)

    def step() -> None:
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    def synchronised() -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter()

    start = synchronised()
    step()
    first = synchronised() - start
    step()  # a second step may still meet new plans (the optimizer's first update is behind it)
    start = synchronised()
    for _ in range(steps):
        step()
    steady = steps * batch_size / (synchronised() - start)
    cudnn = torch.backends.cudnn.version() if device.type == "cuda" else None
    return {"layout": layout, "first_step_s": round(first, 3), "steady_images_per_s": round(steady, 1), "cudnn": cudnn}


def study(args) -> list[dict]:
    """Each layout in a child process of its own, one after another."""
    rows = []
    for layout in args.layouts:
        command = [sys.executable, __file__, "--child", layout, "--device", args.device, "--model", args.model]
        command += ["--batch-size", str(args.batch_size), "--precision", args.precision, "--steps", str(args.steps)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            tail = " / ".join(done.stderr.strip().splitlines()[-2:])
            rows.append({"layout": layout, "error": f"exit {done.returncode}: {tail}"})
        else:
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(row_line(rows[-1]), flush=True)
    return rows


def row_line(row: dict) -> str:
    if "error" in row:
        return f"{row['layout']:<18} {row['error']}"
    return f"{row['layout']:<18} first step {row['first_step_s']:7.2f} s   steady {row['steady_images_per_s']:9,.0f} images/s"


def markdown(rows: list[dict]) -> list[str]:
    """The rows as a markdown table, for gpu-check's report."""
    lines = ["| depthwise layout | first step, s | steady images/s |", "| --- | ---: | ---: |"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['layout']} | {row['error']} | |")
        else:
            lines.append(f"| {row['layout']} | {row['first_step_s']:.2f} | {row['steady_images_per_s']:,.0f} |")
    return lines


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--model", default="tf_efficientnet_b5", help="timm model (default: %(default)s, the projects')")
    parser.add_argument("--batch-size", type=positive_int, default=1024, help="(default: %(default)s, the projects')")
    parser.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto")
    parser.add_argument("--steps", type=positive_int, default=5, help="steps timed for the steady speed (default: 5)")
    parser.add_argument("--layouts", nargs="+", choices=LAYOUTS, default=list(LAYOUTS), metavar="LAYOUT")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--child", choices=LAYOUTS, help=argparse.SUPPRESS)  # one layout, in this process
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.model, args.batch_size, args.precision, args.device, args.steps)))
        return
    rows = study(args)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"model": args.model, "batch_size": args.batch_size, "rows": rows}, indent=2) + "\n")
    if any("error" in row for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
