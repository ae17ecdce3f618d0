"""make new-project in a temporary copy of the repository: a third project is one folder, and everything that
takes a project works on it (make train, evaluate, predict, make cluster-files, make reproduce, the tests)."""

import json
import subprocess
import sys

import pytest
from helpers import PROJECTS, REPO, SMALL, copy_repository, in_clone, make_in_clone, single_run_dir

pytestmark = pytest.mark.slow
NAME = "eurosat-third"


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    return copy_repository(tmp_path_factory.mktemp("clone") / "repo")


def test_a_scaffolded_project_works_everywhere_with_no_file_outside_its_folder(clone, sample_dir, tmp_path):
    result = make_in_clone(clone, "new-project", f"NAME={NAME}", f"FROM={PROJECTS[-1]}")
    assert f"wrote projects/{NAME}/ (README.md, project.toml, train.py) from {PROJECTS[-1]}" in result.stdout
    changed = in_clone(clone, "git", "status", "--porcelain", "--untracked-files=all").stdout.splitlines()
    assert sorted(line[3:] for line in changed) == [f"projects/{NAME}/{f}" for f in ("README.md", "project.toml", "train.py")]
    assert NAME in make_in_clone(clone, "help").stdout  # listed among the projects

    # make train on the local runner, then evaluate and predict with its train.py
    runs = tmp_path / "runs"
    args = f"ARGS=--epochs 1 --deterministic {' '.join(SMALL)} --out {runs}"
    assert "Epoch 1/1 loss" in make_in_clone(clone, "train", "RUNNER=local", f"PROJECT={NAME}", f"DATA={sample_dir}", args).stdout
    run_dir = single_run_dir(runs)
    assert json.loads((run_dir / "config.json").read_text())["project"] == NAME
    script = clone / "projects" / NAME / "train.py"
    assert "on 108 validation images" in in_clone(clone, sys.executable, script, "evaluate", run_dir / "best.ckpt").stdout
    tif = sample_dir / "Forest" / "Forest_1.tif"
    assert in_clone(clone, sys.executable, script, "predict", run_dir / "best.ckpt", tif).stdout.startswith(f"{tif}\t")

    # the cluster files name its image and its layout flags; make reproduce trains it again to the same metrics
    make_in_clone(
        clone,
        "cluster-files",
        f"PROJECT={NAME}",
        "NODES=2",
        "GPUS=4",
        "REGISTRY=registry.example.org/team",
        "ARGS=--no-pretrained",
    )  # fmt: skip (random weights: nothing for the host to fetch offline)
    slurm = (clone / "build" / "cluster" / f"{NAME}-2x4" / "slurm.sbatch").read_text()
    assert f'projects/{NAME}/train.py train --data "$data" --devices 4 --num-nodes 2' in slurm
    assert "registry.example.org/team/lightning:" in slurm
    assert "metrics: identical to the recorded run" in make_in_clone(clone, "reproduce", f"RUN={run_dir}").stdout

    # the project-parametrized tests pick it up: pytest finds its id (an id it did not collect is an error) and it passes
    test = f"tests/test_projects.py::test_help_lists_the_shared_and_the_project_flags[{NAME}]"  # one is proof (it trained above)
    result = in_clone(clone, sys.executable, "-m", "pytest", "-q", test, "-p", "no:cacheprovider")
    assert "1 passed" in result.stdout and "failed" not in result.stdout

    changed = in_clone(clone, "git", "status", "--porcelain", "--untracked-files=all").stdout.splitlines()
    assert all(line[3:].startswith(f"projects/{NAME}/") for line in changed), changed  # still nothing else


def test_bad_or_taken_names_are_one_line(clone):
    for name, message in [
        ("", "pass NAME=<name>"),
        ("Eurosat_X", "NAME=Eurosat_X: use lowercase letters"),
        (PROJECTS[0], f"NAME={PROJECTS[0]}: projects/{PROJECTS[0]} exists already"),
    ]:
        result = make_in_clone(clone, "new-project", f"NAME={name}", check=False)
        assert result.returncode == 2 and f"error: {message}" in result.stderr.splitlines()[0]
    result = make_in_clone(clone, "new-project", "NAME=eurosat-x", "FROM=nope", check=False)
    assert result.returncode == 2 and "error: unknown project 'nope'" in result.stderr
    assert not (clone / "projects" / "eurosat-x").exists()


def test_no_project_is_named_outside_projects_docs_readme_tests_and_results():
    """(bench/results/ holds records of runs that were made, such as a gpu-check's steps, each named by its project;
    CONTRIBUTING.md and CHANGELOG.md are documentation, like README.md)"""
    names = [arg for project in PROJECTS for arg in ("-e", project)]
    found = subprocess.run(
        [
            "git",
            "grep",
            "-l",
            *names,
            "--",
            ".",
            ":!projects",
            ":!docs",
            ":!README.md",
            ":!CONTRIBUTING.md",
            ":!CHANGELOG.md",
            ":!tests",
            ":!bench/results",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert found.stdout == "", f"project names written outside their folders:\n{found.stdout}"
