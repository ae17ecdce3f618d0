"""Bad input: one clear line naming the file or flag, a non-zero exit, no traceback, nothing written lost.

Every project's main(argv) runs in this process, behind the same one-line error handling as its command line."""

import os
import shutil
import sys

import numpy as np
import pytest
import tifffile
from helpers import PROJECTS, SMALL, main_in_process, run, run_project

import eurosat.files
from eurosat.cache import cache_key
from eurosat.files import list_files
from eurosat.sample import write_sample


def assert_one_clear_line(result, *expected):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for text in expected:
        assert text in lines[0], lines[0]


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "eurosat"
    write_sample(path, fraction=0.001)
    return path


def train(project, data, out, *extra):
    return main_in_process(project, "train", "--data", data, "--out", out, "--epochs", "1", *SMALL, *extra, check=False)


@pytest.mark.parametrize("project", PROJECTS)
def test_missing_data_directory(project, tmp_path):
    result = train(project, tmp_path / "nowhere", tmp_path / "runs")
    assert_one_clear_line(result, "nowhere", "make data", "make data-sample")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("project", PROJECTS)
def test_empty_class_folder(project, data, tmp_path):
    shutil.rmtree(data / "Pasture")
    (data / "Pasture").mkdir()
    assert_one_clear_line(train(project, data, tmp_path / "runs"), "Pasture", "holds no images")


@pytest.mark.parametrize("project", PROJECTS)
def test_corrupt_tiff(project, data, tmp_path):
    (data / "River" / "River_3.tif").write_bytes(b"II*\x00garbage")
    assert_one_clear_line(train(project, data, tmp_path / "runs"), "River_3.tif", "corrupt")


@pytest.mark.parametrize("project", PROJECTS)
def test_wrong_band_count(project, data, tmp_path):
    tifffile.imwrite(
        data / "Forest" / "Forest_2.tif", np.ones((64, 64, 4), np.uint16), photometric="minisblack", planarconfig="contig"
    )
    assert_one_clear_line(train(project, data, tmp_path / "runs"), "Forest_2.tif", "4 bands", "expected 64x64 with 13")


def add_litter(data):
    """What copying a EuroSAT folder from a Mac, from Windows or through Jupyter brings along."""
    (data / "Forest" / ".DS_Store").write_bytes(b"\0Bud1")
    (data / "Forest" / "._Forest_1.tif").write_bytes(b"\0\5\26\7")  # AppleDouble, a TIFF only by name
    (data / "River" / "Thumbs.db").write_bytes(b"\xd0\xcf")
    (data / "River" / "desktop.ini").write_text("[.ShellClassInfo]")
    (data / "SeaLake" / ".ipynb_checkpoints").mkdir()
    (data / "SeaLake" / ".ipynb_checkpoints" / "x.tif").write_bytes(b"")
    (data / "__MACOSX" / "Forest").mkdir(parents=True)
    (data / "__MACOSX" / "Forest" / "._Forest_1.tif").write_bytes(b"\0\5\26\7")


@pytest.mark.parametrize("project", PROJECTS)
def test_os_litter_is_ignored_without_a_word(project, data, tmp_path):
    add_litter(data)
    result = train(project, data, tmp_path / "runs")
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    assert "40 train / 10 val images" in result.stdout  # 50 images, 10 classes: __MACOSX is no class


@pytest.mark.parametrize("project", PROJECTS)
def test_other_non_image_files_are_skipped_with_one_warning(project, data, tmp_path, monkeypatch):
    # The warning comes once a process for a folder; a test before this one in this process may have had a folder of
    # the same name (a passing test's tmp_path is removed, and its name given again): start as a new process would.
    monkeypatch.setattr(eurosat.files, "_WARNED", set())
    (data / "Highway" / "notes.txt").write_text("todo")
    (data / "Pasture" / "extra").mkdir()
    result = train(project, data, tmp_path / "runs")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning")]
    assert result.returncode == 0 and warnings == [
        f"warning: skipped 2 file(s) in the class folders of {data} that are not .tif or .jpg images "
        f"(the first: {data / 'Highway' / 'notes.txt'})"
    ]
    assert "40 train / 10 val images" in result.stdout


def test_ignored_and_skipped_files_leave_the_cache_key_alone(data):
    before = cache_key(list_files(data), (3, 2, 1))
    add_litter(data)
    (data / "Highway" / "notes.txt").write_text("todo")
    assert cache_key(list_files(data), (3, 2, 1)) == before


@pytest.mark.parametrize("project", PROJECTS)
def test_unknown_model(project, data, tmp_path):
    assert_one_clear_line(train(project, data, tmp_path / "runs", "--model", "resnet_nope"), "--model resnet_nope", "unknown")


def test_an_unknown_model_suggests_the_names_a_typo_most_likely_meant(tmp_path):
    result = train(PROJECTS[0], tmp_path, tmp_path / "runs", "--model", "resnet10")
    assert_one_clear_line(result, "--model resnet10: unknown timm model (did you mean resnet10t, resnet101, ")
    result = train(PROJECTS[0], tmp_path, tmp_path / "runs", "--model", "tf_efficientnetb5")
    assert_one_clear_line(result, "(did you mean tf_efficientnet_b5, ")


@pytest.mark.parametrize("project", PROJECTS)
@pytest.mark.parametrize("epochs", ["-1", "0"])
def test_no_epochs_to_train_is_refused_before_anything_is_written(project, data, tmp_path, epochs):
    result = main_in_process(project, "train", "--data", data, "--out", tmp_path / "runs", "--epochs", epochs, check=False)
    assert_one_clear_line(result, f"argument --epochs: {epochs} must be 1 or more")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("project", PROJECTS)
@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--opt", "lamb", "argument --opt: invalid choice: 'lamb'"),
        ("--weight-decay", "-0.1", "argument --weight-decay: -0.1 must be a finite number, 0 or more"),
        ("--label-smoothing", "1", "argument --label-smoothing: 1 must be 0 or more and below 1"),
        ("--clip-grad", "0", "argument --clip-grad: 0 must be a finite number above 0"),
        ("--select", "acc", "argument --select: invalid choice: 'acc'"),
    ],
)
def test_a_bad_recipe_setting_is_one_line_before_anything_is_written(project, data, tmp_path, flag, value, says):
    result = main_in_process(project, "train", "--data", data, "--out", tmp_path / "runs", flag, value, check=False)
    assert_one_clear_line(result, says)
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("project", PROJECTS)
def test_bad_band_choice(project, data, tmp_path):
    assert_one_clear_line(train(project, data, tmp_path / "runs", "--bands", "3,2,20"), "--bands", "channel 20")


@pytest.mark.parametrize("project", PROJECTS)
def test_unwritable_output_directory(project, data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    result = train(project, data, blocker / "runs")
    assert_one_clear_line(result, "cannot write to output directory", str(blocker / "runs"))
    assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("project", PROJECTS)
def test_read_only_output_directory(project, data, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; covered by test_unwritable_output_directory")
    out = tmp_path / "runs"
    out.mkdir(mode=0o555)
    assert_one_clear_line(train(project, data, out), "cannot write to output directory")


@pytest.mark.parametrize("project", PROJECTS)
def test_failed_run_leaves_earlier_runs_untouched(project, data, tmp_path):
    earlier = tmp_path / "runs" / "20260101-000000-resnet10t"
    earlier.mkdir(parents=True)
    (earlier / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (data / "River" / "River_1.tif").write_bytes(b"junk")
    train(project, data, tmp_path / "runs")
    assert [p.name for p in (tmp_path / "runs").iterdir()] == [earlier.name]
    assert (earlier / "metrics.jsonl").read_text() == '{"epoch": 1}\n'


@pytest.mark.parametrize("project", PROJECTS)
def test_corrupt_checkpoint(project, tmp_path):
    checkpoint = tmp_path / "last.ckpt"
    checkpoint.write_bytes(b"PK\x03\x04 truncated")
    assert_one_clear_line(main_in_process(project, "evaluate", checkpoint, check=False), str(checkpoint), "corrupt")


@pytest.mark.parametrize("project", PROJECTS)
def test_missing_checkpoint_is_not_called_corrupt(project, tmp_path):
    checkpoint = tmp_path / "runs" / "best.ckpt"
    result = main_in_process(project, "evaluate", checkpoint, check=False)
    assert_one_clear_line(result, f"cannot load checkpoint {checkpoint}: no such file")
    assert "corrupt" not in result.stderr


@pytest.mark.parametrize("project", PROJECTS)
def test_resume_without_checkpoint(project, tmp_path):
    result = main_in_process(project, "train", "--resume", tmp_path, check=False)
    assert_one_clear_line(result, "--resume", "no checkpoint")


@pytest.mark.parametrize("project", PROJECTS)
def test_pretrained_offline(project, data, tmp_path):
    # a process: the hub reads HF_HUB_OFFLINE when it is imported
    argv = ["train", "--data", data, "--out", tmp_path / "runs", "--epochs", "1", *SMALL, "--pretrained"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hub")}
    env.pop("LOCKED", None)
    result = run_project(project, *argv, check=False, env=env)
    assert_one_clear_line(result, "--pretrained: cannot get ImageNet weights", "make weights MODEL=", "--no-pretrained")
    assert not (tmp_path / "runs").exists()


# A mistyped command answers before torch is imported (about 6 s on 2 cores): its arguments are checked first.
IMPORTS_AFTER = """
import runpy, sys
module = sys.argv[1] == "-m"
sys.argv = sys.argv[2:] if module else sys.argv[1:]
sys.path.insert(0, "bench")
try:
    runpy.run_module(sys.argv[0], run_name="__main__") if module else runpy.run_path(sys.argv[0], run_name="__main__")
except SystemExit as exc:
    print("exit", exc.code, "imported", *sorted({"torch", "timm"} & sys.modules.keys()))
"""


@pytest.mark.parametrize(
    "command",
    [["-m", "eurosat.report", "runs/nope"], ["-m", "eurosat.reproduce", "/tmp/nope"], ["bench/run.py", "--budget", "0"]],
    ids=["report", "reproduce", "bench"],
)
def test_a_mistyped_command_answers_before_importing_torch(command):
    result = run(sys.executable, "-c", IMPORTS_AFTER, *command, check=False)
    assert result.stdout.strip() == "exit 2 imported", result.stdout + result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
