"""make sweep PROJECT=... SWEEP="--seed 1,2,3 --lr 1e-3,3e-4" ARGS="...": every combination of the values, as
ordinary runs one after another (or JOBS at a time), then one summary of them.

Each combination is checked by the project's own parser before anything runs, so a bad value is one line. The
runs go into runs/<project>/<sweep>/<nn>/<run-id>/, each with its own provenance; sweep.json lists the
combinations, their flags, run directories and exit statuses.

    python -m eurosat.sweep PROJECT --sweep "--seed 1,2,3" [--args "..."] [--jobs N] [--name NAME]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from eurosat import manifest, summary, weights
from eurosat.cli import ArgumentParser, positive_int, run_cli
from eurosat.errors import UserError


def parse_grid(text: str) -> list[tuple[str, list[str]]]:
    """`--seed 1,2,3 --lr 1e-3,3e-4` -> [("--seed", ["1", "2", "3"]), ("--lr", ["1e-3", "3e-4"])]."""
    words = shlex.split(text)
    if not words:
        raise UserError('SWEEP is empty: pass flags with comma-separated values, e.g. SWEEP="--seed 1,2,3"')
    if len(words) % 2:
        raise UserError(f"SWEEP: {words[-1]} has no values; write {words[-1]} v1,v2")
    grid = []
    for flag, values in zip(words[::2], words[1::2], strict=True):
        if not flag.startswith("--"):
            raise UserError(f"SWEEP: {flag!r} is not a flag; write --flag v1,v2 for each swept flag")
        parts = values.split(",")
        if "" in parts:
            raise UserError(f"SWEEP: {flag} {values!r} has an empty value; separate values by single commas")
        grid.append((flag, parts))
    flags = [flag for flag, _ in grid]
    if len(set(flags)) < len(flags):
        raise UserError(f"SWEEP: a flag is given twice ({' '.join(flags)}); list all its values once")
    return grid


def combinations(grid: list[tuple[str, list[str]]]) -> list[list[str]]:
    """Every combination, the last flag varying fastest, as train.py flags."""
    return [[word for flag, value in zip([f for f, _ in grid], values, strict=True) for word in (flag, value)]
            for values in itertools.product(*(values for _, values in grid))]  # fmt: skip


def check(project: str, base: list[str], combos: list[list[str]]) -> None:
    """Each combination through the project's own train parser: a bad value is one line before anything runs."""
    from eurosat.lifecycle import make_parser  # torch and timm: once the grid itself is known to be well formed
    from eurosat.projects import load_project

    train = make_parser(load_project(project).EXPERIMENT)[1]["train"]

    def refuse(message):
        raise UserError(f"SWEEP/ARGS: {message}")

    train.error = refuse  # one line, instead of argparse's usage and exit
    for combo in combos:
        if {"--out", "--run-dir", "--resume"} & {*base, *combo}:
            raise UserError("SWEEP/ARGS: --out, --run-dir and --resume are the sweep's: each run gets its own folder")
        train.parse_args([*base, *combo])


def threads_per_run(jobs: int, environ=os.environ) -> dict:
    """The runs' environment: with several at a time, each gets its share of the CPUs as OMP_NUM_THREADS (PyTorch's
    threads), unless it is set already. Each taking them all ran a 2-core machine's 2-at-a-time sweep 10 to 40 times
    slower than its runs one at a time (2026-12-05)."""
    env = dict(environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // jobs))
    return env


def run_sweep(project: str, sweep: str, base: list[str], jobs: int, out: Path, data: str | None) -> int:
    grid = parse_grid(sweep)
    combos = combinations(grid)
    check(project, base, combos)
    weights.for_runs(project, [[*base, *combo] for combo in combos])  # locked and cached once, not by each run
    out.mkdir(parents=True, exist_ok=True)
    launch = manifest.load(project).launch(1, sys.executable)
    data_flags = ["--data", data] if data else []
    entries = [{"index": i, "flags": combo, "out": str(out / f"{i:02d}")} for i, combo in enumerate(combos)]
    print(f"sweep {out}: {len(entries)} run(s) of {project}, {jobs} at a time", flush=True)
    env = threads_per_run(jobs)

    def one(entry: dict) -> dict:
        command = [*launch, *data_flags, *base, *entry["flags"], "--out", entry["out"]]  # (launch ends in "train")
        start = time.monotonic()
        log = Path(entry["out"]).with_suffix(".log")
        Path(entry["out"]).mkdir(parents=True, exist_ok=True)
        with open(log, "w") as output:
            code = subprocess.run(command, stdout=output, stderr=subprocess.STDOUT, env=env).returncode
        runs = sorted(p.parent for p in Path(entry["out"]).glob("*/config.json"))
        entry.update(command=shlex.join(command), exit=code, seconds=round(time.monotonic() - start, 1), log=str(log))
        entry["run_dir"] = str(runs[-1]) if runs else None
        print(f"sweep: {' '.join(entry['flags'])}: exit {code} ({entry['seconds']} s) {entry['run_dir'] or log}", flush=True)
        return entry

    with ThreadPoolExecutor(jobs) as pool:
        done = list(pool.map(one, entries))
    record = {"project": project, "sweep": sweep, "args": base, "jobs": jobs, "runs": done}
    (out / "sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    failed = [entry for entry in done if entry["exit"]]
    print(f"sweep: {len(done) - len(failed)} of {len(done)} run(s) finished; manifest {out / 'sweep.json'}")
    if len(failed) < len(done):
        summary.main([str(out)])
    return len(failed)


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("project")
    parser.add_argument("--sweep", required=True, help='flags with comma-separated values: "--seed 1,2,3 --lr 1e-3,3e-4"')
    parser.add_argument("--args", default="", help="flags every run gets")
    parser.add_argument("--data", help="EuroSAT folder for every run (default: train.py's)")
    parser.add_argument("--jobs", type=positive_int, default=1, help="runs at a time (default: 1)")
    parser.add_argument("--name", help="the sweep's folder under runs/<project>/ (default: sweep-<date>-<time>)")
    parser.add_argument("--runs", type=Path, default=Path("runs"), help="(default: runs)")
    args = parser.parse_args(argv)
    if args.project not in manifest.project_names():
        raise UserError(f"PROJECT={args.project}: no such project; projects: {', '.join(manifest.project_names())}")
    name = args.name or time.strftime("sweep-%Y%m%d-%H%M%S")
    failed = run_sweep(args.project, args.sweep, shlex.split(args.args), args.jobs, args.runs / args.project / name, args.data)
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
