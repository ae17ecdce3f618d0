"""make summary RUNS="runs/<project>/<sweep or glob>": one table from many runs.

Runs are grouped by their settings except the seed. For each setting: the number of runs, the mean and standard
deviation of the final and the best val_acc (and of test_acc when the split has a test part), the epochs and the
seconds per epoch; provenance that makes two runs of one setting incomparable (code commit, lock, weights, GPUs,
processes) is flagged. A run that did not finish is listed apart and never averaged in. Writes summary.md,
summary.csv and summary.png (each setting's runs as points, with their mean).

    python -m eurosat.summary RUNS... [--out DIR]
"""

from __future__ import annotations

import argparse
import csv
import glob
import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from eurosat.cli import ArgumentParser, run_cli
from eurosat.errors import UserError
from eurosat.reproduce import COMPARED, read_history

# Not settings of what is trained: where it ran, where it was written and tracked, and what the run derived
NOT_SETTINGS = {
    "seed",
    "out",
    "run_dir",
    "resume",
    "tracking",
    "tracking_uri",
    "cache_dir",
    "device",
    "data_on",
    "checkpoint_every",
}
NOT_SETTINGS |= {"profile", "profiler", "classes", "bands_resolved", "scale", "input", "precision_resolved", "world_size"}
NOT_SETTINGS |= {"normalization"}  # --normalize's statistics, derived from the data
# Provenance that must agree between the runs of one setting for their spread to mean anything
# (where provenance.json keeps each: make reproduce's table)
COMPARABLE = {
    label: COMPARED[name]
    for label, name in (
        ("code commit", "git commit"),
        ("lock sha256", "lockfile sha256"),
        ("image id", "container image id"),
        ("image digest", "container image digest"),
        ("weights sha256", "pretrained weights sha256"),
        ("GPUs", "GPUs"),
        ("processes", "processes"),
    )
}


@dataclass
class RunRecord:
    directory: Path
    config: dict
    provenance: dict
    history: list[dict]
    summary: dict | None  # metrics.json: written when the run finished
    damaged: str | None = None  # metrics.jsonl ends in a half-written line: the run is listed apart

    @property
    def finished(self) -> bool:
        return self.summary is not None and len(self.history) >= self.config.get("epochs", 0) and not self.damaged

    def setting(self) -> tuple:
        return tuple(sorted((k, json.dumps(v, sort_keys=True)) for k, v in self.config.items() if k not in NOT_SETTINGS))

    def figures(self) -> dict:
        figures = {
            "final_val_acc": self.history[-1]["val_acc"],
            "best_val_acc": max(r["val_acc"] for r in self.history),
            "epochs": len(self.history),
            "seconds_per_epoch": statistics.mean(r["seconds"] for r in self.history),
        }
        if test := self.summary.get("test"):
            figures["test_acc"] = test["acc"]
        return figures


@dataclass
class Group:
    setting: dict
    runs: list[RunRecord] = field(default_factory=list)

    def row(self) -> dict:
        figures = [run.figures() for run in self.runs]
        row = {"runs": len(self.runs), "seeds": ",".join(str(run.config.get("seed")) for run in self.runs)}
        for name in ("final_val_acc", "best_val_acc", "test_acc", "epochs", "seconds_per_epoch"):
            values = [f[name] for f in figures if name in f]
            if values:
                row[f"{name}_mean"] = statistics.mean(values)
                row[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        row["incomparable"] = "; ".join(self.incomparable())
        return row

    def incomparable(self) -> list[str]:
        differences = []
        for name, (section, key) in COMPARABLE.items():
            values = {json.dumps(run.provenance.get(section, {}).get(key), sort_keys=True) for run in self.runs}
            if len(values) > 1:
                differences.append(f"{name} differs ({len(values)} values)")
        return differences


def find_runs(patterns: list[str]) -> list[Path]:
    """Run directories (folders with a config.json) matched by the patterns or anywhere under them."""
    found = []
    for pattern in patterns:
        matches = [Path(p) for p in sorted(glob.glob(pattern))]
        if not matches:
            raise UserError(f"RUNS={pattern}: matches nothing; pass run directories, a sweep folder or a glob")
        for match in matches:
            if (match / "config.json").is_file():
                found.append(match)
            elif match.is_dir():
                found += sorted(config.parent for config in match.rglob("config.json"))
    runs = list(dict.fromkeys(found))
    if not runs:
        raise UserError(f"RUNS={' '.join(patterns)}: no run directories (folders with a config.json) in it")
    return runs


def read(directory: Path) -> RunRecord:
    def load(name: str, default=None):
        path = directory / name
        try:
            return json.loads(path.read_text()) if path.exists() else default
        except ValueError as exc:
            raise UserError(f"{path} is not JSON ({exc}): the run directory is damaged") from None

    history, damaged = read_history(directory / "metrics.jsonl")
    return RunRecord(directory, load("config.json"), load("provenance.json", {}), history, load("metrics.json"), damaged)


def summarize(directories: list[Path]) -> tuple[list[Group], list[RunRecord]]:
    """Finished runs grouped by setting (in the order first met), and the runs that did not finish."""
    groups: dict[tuple, Group] = {}
    unfinished = []
    for directory in directories:
        run = read(directory)
        if not run.finished:
            unfinished.append(run)
            continue
        key = run.setting()
        groups.setdefault(key, Group({k: json.loads(v) for k, v in key})).runs.append(run)
    return list(groups.values()), unfinished


def varying(groups: list[Group]) -> list[str]:
    """The settings that differ between the groups: what names a row."""
    keys = sorted({key for group in groups for key in group.setting})
    return [key for key in keys if len({json.dumps(g.setting.get(key), sort_keys=True) for g in groups}) > 1]


def label(group: Group, keys: list[str]) -> str:
    return ", ".join(f"{key}={group.setting.get(key)}" for key in keys) or "all runs"


def write_summary(groups: list[Group], unfinished: list[RunRecord], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    keys = varying(groups)
    rows = [{"setting": label(group, keys), **group.row()} for group in groups]
    columns = ["setting", "runs", "seeds"]
    columns += [name for name in rows[0] if name not in ("setting", "runs", "seeds", "incomparable")] if rows else []
    columns.append("incomparable")
    with open(out / "summary.csv", "w", newline="") as file:
        writer = csv.DictWriter(file, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    def pair(row, name, digits=4):
        if f"{name}_mean" not in row:
            return "-"
        return f"{row[f'{name}_mean']:.{digits}f} ± {row[f'{name}_std']:.{digits}f}"

    finished = sum(row["runs"] for row in rows)
    lines = ["# Summary", "", f"{finished} finished run(s) in {len(rows)} setting(s); mean ± standard deviation over seeds.", ""]
    lines += ["| setting | runs | final val_acc | best val_acc | test_acc | epochs | s/epoch | incomparable |"]
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for row in rows:
        figures = [pair(row, name) for name in ("final_val_acc", "best_val_acc", "test_acc")]
        figures += [pair(row, name, 1) for name in ("epochs", "seconds_per_epoch")]
        lines.append(f"| {row['setting']} | {row['runs']} | {' | '.join(figures)} | {row['incomparable'] or '-'} |")
    if unfinished:
        lines += ["", "Not finished (left out of the averages):", ""]
        lines += [f"- {run.directory}: {len(run.history)} of {run.config.get('epochs')} epochs"
                  + (f"; {run.damaged}" if run.damaged else "") for run in unfinished]  # fmt: skip
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    picture(groups, rows, out / "summary.png")
    return [out / "summary.md", out / "summary.csv", out / "summary.png"]


def picture(groups: list[Group], rows: list[dict], path: Path) -> None:
    """Each setting's runs as points (final val_acc), with their mean as a bar."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(groups)), 3.6), dpi=100)
    for x, (group, row) in enumerate(zip(groups, rows, strict=True)):
        values = [run.figures()["final_val_acc"] for run in group.runs]
        ax.scatter([x] * len(values), values, color="tab:blue", zorder=3)
        ax.hlines(row["final_val_acc_mean"], x - 0.3, x + 0.3, color="tab:orange", zorder=2)
    ax.set_xticks(range(len(rows)), [row["setting"] for row in rows], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("final val_acc")
    ax.set_title("runs (points) and their mean (line)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", metavar="RUNS", help="run directories, sweep folders or globs")
    parser.add_argument(
        "--out", type=Path, help="where summary.md/.csv/.png go (default: the first RUNS folder, or the runs' parent)"
    )
    args = parser.parse_args(argv)
    directories = find_runs(args.runs)
    groups, unfinished = summarize(directories)
    if not groups:
        raise UserError(f"RUNS={' '.join(args.runs)}: none of the {len(directories)} run(s) finished: nothing to average")
    first = Path(args.runs[0])
    out = args.out or (first if first.is_dir() and not (first / "config.json").exists() else directories[0].parent)
    for path in write_summary(groups, unfinished, out):
        print(f"wrote {path}")
    print((out / "summary.md").read_text())


if __name__ == "__main__":
    run_cli(main)
