"""make reproduce: a recorded run is trained again from its own files, differences are warned about, metrics compared."""

import json

import pytest
from helpers import PROJECTS, SMALL, assert_same_weights, read_metrics, run, run_project, single_run_dir, without_timings

from eurosat.reproduce import compare

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("project", PROJECTS)
def test_make_reproduce_reruns_a_run_and_compares_it(project, sample_dir, tmp_path, capsys):
    run_project(project, "train", "--data", sample_dir, "--out", tmp_path, "--epochs", "1", "--deterministic", *SMALL)
    run_dir = single_run_dir(tmp_path)

    result = run("make", "reproduce", f"RUN={run_dir}")
    assert "same git commit, lockfile, container image, library versions and hardware" in result.stdout
    assert "metrics: identical to the recorded run (timings excepted)" in result.stdout
    assert [line.split()[:2] for line in result.stdout.splitlines() if line.strip().startswith("1  ")] == [
        ["1", "loss"], ["1", "acc"], ["1", "val_loss"], ["1", "val_acc"]
    ]  # fmt: skip
    (new_dir,) = set(tmp_path.iterdir()) - {run_dir}
    recorded, new = (json.loads((d / "config.json").read_text()) for d in (run_dir, new_dir))
    assert {k: v for k, v in new.items() if k != "out"} == {k: v for k, v in recorded.items() if k != "out"}
    # --deterministic: two runs with the same data, config and seed repeat to the bit on the CPU, weights included
    assert recorded["deterministic"] is True and without_timings(read_metrics(new_dir)) == without_timings(read_metrics(run_dir))
    assert_same_weights(new_dir / "last.ckpt", run_dir / "last.ckpt")
    assert all(json.loads((d / "provenance.json").read_text())["deterministic_algorithms"] for d in (run_dir, new_dir))

    # The same run as if recorded elsewhere: another commit, lock, torch and GPU, and one epoch's val_acc changed,
    # compared with that rerun by what make reproduce compared it with (a second rerun would train the same again).
    provenance = json.loads((run_dir / "provenance.json").read_text())
    provenance["git"]["commit"] = "0" * 40
    provenance["lockfile"]["sha256"] = "f" * 64
    provenance["versions"]["torch"] = "2.0.0"
    provenance["hardware"]["gpus"] = ["NVIDIA H100 80GB HBM3"]
    (run_dir / "provenance.json").write_text(json.dumps(provenance))
    metrics = json.loads((run_dir / "metrics.jsonl").read_text())
    (run_dir / "metrics.jsonl").write_text(json.dumps({**metrics, "val_acc": metrics["val_acc"] + 0.25}) + "\n")

    capsys.readouterr()
    assert compare(run_dir, new_dir) == 1
    printed = capsys.readouterr().out
    assert f"warning: git commit differs: recorded {'0' * 40}, now " in printed
    assert f"warning: lockfile sha256 differs: recorded {'f' * 64}, now " in printed
    assert "warning: torch differs: recorded 2.0.0, now " in printed
    assert "warning: GPUs differs: recorded ['NVIDIA H100 80GB HBM3'], now []" in printed
    assert "metrics: 1 value(s) differ from the recorded run, by up to 0.25" in printed


def test_make_reproduce_without_a_run_says_what_to_pass(tmp_path):
    result = run("make", "reproduce", check=False)
    assert result.returncode == 2 and "error: pass RUN=runs/<project>/<run-id>" in result.stderr
    result = run("make", "reproduce", f"RUN={tmp_path / 'nope'}", check=False)
    assert result.returncode != 0 and f"error: RUN={tmp_path / 'nope'}: no such run directory" in result.stderr
    assert "Traceback" not in result.stderr


def test_make_report_writes_into_the_run_directory(sample_dir, tmp_path):
    run_project(PROJECTS[0], "train", "--data", sample_dir, "--out", tmp_path, "--epochs", "1", *SMALL)
    run_dir = single_run_dir(tmp_path)
    result = run("make", "report", f"RUN={run_dir}")
    assert result.stdout.splitlines()[-2:] == [f"wrote {run_dir / 'report.md'}", f"wrote {run_dir / 'report.png'}"]
    assert (run_dir / "report.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    ("settings", "line"),
    [
        ([], "error: pass RUN=runs/<project>/<run-id> (a run directory to report on)"),
        (["RUN=runs/nope"], "error: RUN=runs/nope: no such run directory; pass RUN=runs/<project>/<run-id>"),
    ],
)
def test_make_report_without_a_run_is_one_line(settings, line):
    result = run("make", "report", *settings, check=False)
    assert result.returncode == 2 and result.stderr.splitlines()[0] == line and "Traceback" not in result.stderr
