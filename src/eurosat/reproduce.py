"""make reproduce RUN=runs/<project>/<run-id>: train a recorded run again from its config.json and compare.

Every difference between the recorded provenance and today's (git commit, lockfile, container image, library
versions, hardware) is printed as a warning, then the recorded and the new metrics side by side.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from eurosat import manifest
from eurosat.cli import ArgumentParser, run_cli
from eurosat.errors import UserError
from eurosat.manifest import REPO_ROOT

NOT_REPLAYED = {
    "help",
    "command",
    "resume",
    "out",
    "run_dir",
    "profile",
    "profiler",
    "tracking",
    "tracking_uri",
}  # where, not what
COMPARED = {
    "git commit": ("git", "commit"),
    "git working tree dirty": ("git", "dirty"),
    "lockfile sha256": ("lockfile", "sha256"),
    "container image": ("container", "image"),
    "container image id": ("container", "image_id"),
    "container image digest": ("container", "digest"),
    "container image built from commit": ("container", "revision"),
    "container image locks": ("container", "locks"),
    "pretrained weights": ("pretrained", "source"),
    "pretrained weights sha256": ("pretrained", "sha256"),
    "python": ("versions", "python"),
    "torch": ("versions", "torch"),
    "CUDA": ("versions", "cuda"),
    "cuDNN": ("versions", "cudnn"),
    "timm": ("versions", "timm"),
    "pytorch_lightning": ("versions", "pytorch_lightning"),
    "numpy": ("versions", "numpy"),
    "device": ("hardware", "device"),
    "GPUs": ("hardware", "gpus"),
    "GPU driver": ("hardware", "driver"),
    "CPUs": ("hardware", "cpus"),
    "platform": ("hardware", "platform"),
    "processes": ("hardware", "world_size"),
}
METRICS = ("loss", "acc", "val_loss", "val_acc")


def read_history(path: Path) -> tuple[list[dict], str | None]:
    """metrics.jsonl's epochs, and what is wrong with its last line when a run stopped while writing it (a kill, a
    full disk): that line is left out. A damaged line before the last is one line of error."""
    lines = path.read_text().splitlines() if path.exists() else []
    history = []
    for number, line in enumerate(lines, 1):
        try:
            history.append(json.loads(line))
        except ValueError:
            if number == len(lines):
                return history, f"{path} ends in a half-written line (the run stopped while writing it)"
            raise UserError(f"{path}: line {number} is not JSON: the run directory is damaged") from None
    return history, None


def read_run(run_dir: Path) -> tuple[dict, dict, list[dict]]:
    try:
        config = json.loads((run_dir / "config.json").read_text())
        provenance = json.loads((run_dir / "provenance.json").read_text())
        if not (run_dir / "metrics.jsonl").exists():
            raise FileNotFoundError(f"no {run_dir / 'metrics.jsonl'}")
        metrics, damaged = read_history(run_dir / "metrics.jsonl")
    except (OSError, ValueError) as exc:
        raise UserError(f"RUN={run_dir} is not a complete run directory ({exc}): pass runs/<project>/<run-id>") from None
    if damaged:
        print(f"warning: {damaged}: read its {len(metrics)} complete epoch(s)", file=sys.stderr)
    return config, provenance, metrics


def train_arguments(project: str, config: dict) -> list[str]:
    """The `train` command line that gives this config: every flag of the project's train parser."""
    from eurosat.lifecycle import make_parser  # torch and timm: here, so that a mistyped RUN answers at once
    from eurosat.projects import load_project

    _, commands = make_parser(load_project(project).EXPERIMENT)
    argv = ["train"]
    for action in commands["train"]._actions:
        if action.dest in NOT_REPLAYED or action.dest not in config or not action.option_strings:
            continue
        value, flag = config[action.dest], action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            argv += [flag] if value else []
        elif isinstance(action, argparse.BooleanOptionalAction):  # --pretrained / --no-pretrained
            argv += [action.option_strings[0] if value else action.option_strings[1]]
        elif value is not None:
            argv += [flag, str(value)]
    return argv


def differences(recorded: dict, new: dict) -> list[str]:
    lines = []
    for name, (section, key) in COMPARED.items():
        before, now = recorded.get(section, {}).get(key), new.get(section, {}).get(key)
        if before != now:
            lines.append(f"warning: {name} differs: recorded {before}, now {now}")
    return lines


def metrics_table(recorded: list[dict], new: list[dict]) -> tuple[list[str], int, float]:
    lines = [f"{'epoch':>5}  {'metric':<8}  {'recorded':>10}  {'reproduced':>10}  {'difference':>10}"]
    differing, largest = 0, 0.0
    for epoch in range(max(len(recorded), len(new))):
        for metric in METRICS:
            before = recorded[epoch][metric] if epoch < len(recorded) else None
            now = new[epoch][metric] if epoch < len(new) else None
            gap = abs(before - now) if before is not None and now is not None else float("inf")
            differing += gap != 0
            largest = max(largest, gap)
            show = lambda v: "-" if v is None else f"{v:.6f}"  # noqa: E731
            lines.append(f"{epoch + 1:>5}  {metric:<8}  {show(before):>10}  {show(now):>10}  {gap:>10.2e}")
    return lines, differing, largest


def reproduce(run_dir: Path) -> int:
    """Reruns RUN; returns the number of metric values that differ from the recorded ones."""
    config, _, _ = read_run(run_dir)
    if "project" not in config:
        raise UserError(f"RUN={run_dir}: its config.json names no project; it was written before projects had manifests")
    project = manifest.load(config["project"])
    out = run_dir.parent
    before = set(out.iterdir())
    # the replayed flags of a project that launches itself hold its layout already
    processes = int(config.get("world_size", 1)) if project.launcher == "torchrun" else 1
    command = [*project.launch(processes, sys.executable), *train_arguments(project.name, config)[1:], "--out", str(out)]
    print("reproducing with:", " ".join(command), flush=True)
    if subprocess.run(command, cwd=REPO_ROOT).returncode:
        raise UserError(f"the rerun of {run_dir} failed (see above)")
    (new_dir,) = set(out.iterdir()) - before
    return compare(run_dir, new_dir)


def compare(run_dir: Path, new_dir: Path) -> int:
    """Prints how the run in new_dir differs from the recorded one: provenance, then metrics side by side; returns the
    number of metric values that differ."""
    _, recorded_provenance, recorded_metrics = read_run(run_dir)
    _, new_provenance, new_metrics = read_run(new_dir)
    print(f"\nrecorded run {run_dir}\nnew run      {new_dir}")
    warnings = differences(recorded_provenance, new_provenance)
    print("\n".join(warnings) or "same git commit, lockfile, container image, library versions and hardware")
    table, differing, largest = metrics_table(recorded_metrics, new_metrics)
    print("\n".join(["", *table, ""]))
    if differing:
        print(f"metrics: {differing} value(s) differ from the recorded run, by up to {largest:.3g}")
    else:
        print("metrics: identical to the recorded run (timings excepted)")
    return differing


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, metavar="RUN", help="a run directory, runs/<project>/<run-id>")
    args = parser.parse_args(argv)
    if not args.run.is_dir():
        raise UserError(f"RUN={args.run}: no such run directory; pass RUN=runs/<project>/<run-id>")
    reproduce(args.run.resolve())


if __name__ == "__main__":
    run_cli(main)
