"""Every project as a user starts it, in real processes: the command line, its provenance, two processes on one
machine launched the way its manifest says (torchrun, or the framework's own launcher), each project's profiler."""

import json
import sys

import pytest
from helpers import DDP_ARGS, PROJECTS, REPO, SMALL, check_two_process_run, run, run_project, single_run_dir

from eurosat import manifest

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("project", PROJECTS)
def test_command_line_run_records_what_ran(project, sample_dir, tmp_path):
    result = run_project(project, "--data", sample_dir, "--out", tmp_path, "--epochs", "1", *SMALL)  # train: the default
    run_dir = single_run_dir(tmp_path)
    assert "Epoch 1/1 loss " in result.stdout and "Traceback" not in result.stderr
    record = json.loads((run_dir / "provenance.json").read_text())
    assert record["versions"]["torch"] and record["versions"]["timm"] and record["versions"]["pytorch_lightning"]
    assert len(record["git"]["commit"]) == 40 and isinstance(record["git"]["dirty"], bool)
    assert f"projects/{project}/train.py" in " ".join(record["command"]) and "--epochs" in record["command"]
    assert "in_container" in record["container"]


@pytest.mark.parametrize("project", PROJECTS)
def test_two_processes_count_every_validation_sample_once(project, sample_dir, tmp_path):
    launch = manifest.load(project).launch(2, sys.executable)
    result = run(*launch, "--data", sample_dir, "--out", tmp_path, *DDP_ARGS)
    check_two_process_run(result, tmp_path)


PROFILERS = [("eurosat-amp", ["--profile"], "profile/*.json"), ("eurosat-lightning", ["--profiler", "simple"], "*profile*.txt")]


@pytest.mark.parametrize(("project", "flags", "pattern"), PROFILERS)
def test_profiler_writes_its_report(project, flags, pattern, sample_dir, tmp_path):
    run_project(project, "train", "--data", sample_dir, "--out", tmp_path, "--epochs", "1", *flags, *SMALL)
    assert list(single_run_dir(tmp_path).glob(pattern))


@pytest.mark.parametrize("project", PROJECTS)
def test_help_lists_the_shared_and_the_project_flags(project):
    result = run(sys.executable, REPO / "projects" / project / "train.py", "train", "--help")
    assert "--checkpoint-every" in result.stdout and "--resume" in result.stdout
