"""Sweeps and summaries: make sweep expands the grid, checks every combination before it runs any, runs each as an
ordinary run directory (JOBS at a time) and lists them in sweep.json; make summary groups runs by setting, averages
over seeds, flags incomparable provenance and keeps unfinished runs out of the averages."""

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from helpers import MODEL, PROJECTS, run

from eurosat.errors import UserError
from eurosat.sweep import combinations, parse_grid, threads_per_run

BASE = f"--epochs 1 --model {MODEL} --batch-size 32 --no-pretrained"


def test_the_grid_is_every_combination_the_last_flag_fastest():
    grid = parse_grid("--seed 1,2,3 --lr 1e-3,3e-4")
    assert grid == [("--seed", ["1", "2", "3"]), ("--lr", ["1e-3", "3e-4"])]
    combos = combinations(grid)
    assert len(combos) == 6 and combos[:2] == [["--seed", "1", "--lr", "1e-3"], ["--seed", "1", "--lr", "3e-4"]]


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ("", "SWEEP is empty"),
        ("--seed", "--seed has no values"),
        ("seed 1,2", "'seed' is not a flag"),
        ("--seed 1,,2", "has an empty value"),
        ("--seed 1 --seed 2", "a flag is given twice"),
    ],
)
def test_a_malformed_grid_is_one_line(sweep, message):
    with pytest.raises(UserError, match=message):
        parse_grid(sweep)


def test_a_bad_value_is_one_line_before_any_run(tmp_path, sample_dir):
    args = ["-m", "eurosat.sweep", PROJECTS[0], "--sweep", "--seed 1,2 --lr 1e-3,abc", "--args", BASE]
    result = run(sys.executable, *args, "--data", sample_dir, "--runs", tmp_path, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: SWEEP/ARGS: argument --lr: 'abc' is not a number"
    assert not any(tmp_path.iterdir())  # nothing ran, nothing was written


@pytest.mark.slow
def test_make_sweep_runs_every_combination_and_make_summary_averages_over_seeds(tmp_path, sample_dir):
    runs = tmp_path / "runs"
    make = ["make", "sweep", f"PROJECT={PROJECTS[0]}", "SWEEP=--seed 1,2 --bn-stats recompute,running", f"ARGS={BASE}"]
    result = run(*make, f"DATA={sample_dir}", "JOBS=2", "SWEEP_NAME=s1", f"RUNS_DIR={runs}", timeout=900)
    sweep = runs / PROJECTS[0] / "s1"
    record = json.loads((sweep / "sweep.json").read_text())
    assert [entry["flags"] for entry in record["runs"]] == [
        ["--seed", "1", "--bn-stats", "recompute"], ["--seed", "1", "--bn-stats", "running"],
        ["--seed", "2", "--bn-stats", "recompute"], ["--seed", "2", "--bn-stats", "running"],
    ]  # fmt: skip
    for entry in record["runs"]:
        assert Path(entry["run_dir"]).parent.parent == sweep
        config = json.loads((Path(entry["run_dir"]) / "config.json").read_text())
        assert entry["exit"] == 0 and str(config["seed"]) == entry["flags"][1] and config["bn_stats"] == entry["flags"][3]
    assert "sweep: 4 of 4 run(s) finished" in result.stdout

    rows = list(csv.DictReader((sweep / "summary.csv").open()))
    assert [row["setting"] for row in rows] == ["bn_stats=recompute", "bn_stats=running"]
    assert all(row["runs"] == "2" and row["seeds"] == "1,2" and row["incomparable"] == "" for row in rows)
    for row in rows:  # the mean of the runs' own final val_acc
        chosen = [Path(e["run_dir"]) for e in record["runs"] if e["flags"][3] == row["setting"].split("=")[1]]
        finals = [json.loads((run_dir / "metrics.json").read_text())["final"]["val_acc"] for run_dir in chosen]
        assert float(row["final_val_acc_mean"]) == pytest.approx(sum(finals) / 2)
    assert (sweep / "summary.png").read_bytes()[:4] == b"\x89PNG"

    # a copy of the sweep with one run unfinished and one from another commit
    copy = shutil.copytree(sweep, tmp_path / "copy")
    run_dirs = sorted(p.parent for p in copy.rglob("config.json"))
    (run_dirs[0] / "metrics.json").unlink()
    provenance = json.loads((run_dirs[1] / "provenance.json").read_text())
    provenance["git"]["commit"] = "0" * 40
    (run_dirs[1] / "provenance.json").write_text(json.dumps(provenance))
    summarized = run("make", "summary", f"RUNS={copy}")
    table = (copy / "summary.md").read_text()
    assert "Not finished (left out of the averages):" in table and str(run_dirs[0]) in table
    rows = {row["setting"]: row for row in csv.DictReader((copy / "summary.csv").open())}
    assert sum(int(row["runs"]) for row in rows.values()) == 3
    assert any("code commit differs (2 values)" in row["incomparable"] for row in rows.values())
    assert f"wrote {copy / 'summary.md'}" in summarized.stdout


def test_summary_of_nothing_is_one_line(tmp_path):
    result = run(sys.executable, "-m", "eurosat.summary", tmp_path / "nope*", check=False)
    assert result.returncode == 2 and result.stderr.strip().startswith("error: RUNS=") and "matches nothing" in result.stderr


@pytest.mark.parametrize("args", ["--run-dir runs/x", "--out elsewhere", "--resume runs/x"])
def test_flags_that_pick_the_run_folder_are_the_sweeps(args):
    from eurosat.sweep import check

    with pytest.raises(UserError, match="--out, --run-dir and --resume are the sweep's"):
        check(PROJECTS[0], args.split(), [["--seed", "1"]])


def test_runs_side_by_side_share_the_cpus_between_them():
    cpus = len(os.sched_getaffinity(0))
    assert threads_per_run(2, {"PATH": "/bin"}) == {"PATH": "/bin", "OMP_NUM_THREADS": str(max(1, cpus // 2))}
    assert threads_per_run(cpus * 4, {})["OMP_NUM_THREADS"] == "1"
    assert threads_per_run(2, {"OMP_NUM_THREADS": "3"}) == {"OMP_NUM_THREADS": "3"}  # the user's own setting
    assert threads_per_run(1, {}) == {}  # one at a time: every CPU, as a run of its own
