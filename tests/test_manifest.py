"""Project manifests and the image hierarchy: what make reads, and one line for each way a manifest can be wrong.

Each case runs `manifest.py` from a copy of src/, projects/ and images/hierarchy.env in a temporary folder, the
way make runs it (the system Python, before any virtual environment)."""

import shutil
import subprocess
import sys

import pytest
from helpers import PROJECTS, REPO

from eurosat import manifest


@pytest.fixture
def copy(tmp_path):
    for folder in ("src", "projects"):
        shutil.copytree(REPO / folder, tmp_path / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (tmp_path / "images").mkdir()
    shutil.copy(REPO / "images" / "hierarchy.env", tmp_path / "images")
    return tmp_path


def manifest_cli(root, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, root / "src/eurosat/manifest.py", *args], capture_output=True, text=True, cwd=root)


def test_every_project_has_a_valid_manifest_and_one_default():
    assert PROJECTS and all(manifest.load(name).train_script.is_file() for name in PROJECTS)
    assert manifest.default_project() in PROJECTS
    hierarchy = manifest.image_hierarchy()
    assert {manifest.load(name).image for name in PROJECTS} <= set(hierarchy.order)


def test_the_image_hierarchy_is_in_build_order_and_ends_at_root_bases():
    hierarchy = manifest.image_hierarchy()
    for position, image in enumerate(hierarchy.order):
        parent = hierarchy.parents[image]
        assert parent in hierarchy.order[:position] or parent in ("CUDA_BASE", "NGC_BASE"), image
        assert hierarchy.lineage(image)[0] == image and image in hierarchy.children(hierarchy.lineage(image)[-1])
    assert [hierarchy.root(image) for image in hierarchy.order] == ["CUDA_BASE", "NGC_BASE", "NGC_BASE", "NGC_BASE"]


def test_launch_and_layout_follow_the_launcher(copy):
    (copy / "projects/demo").mkdir()
    (copy / "projects/demo/train.py").write_text("")
    toml = 'description = "d"\nimage = "lightning"\n[launch]\nlauncher = "self"\n'
    toml += 'layout_flags = ["--gpus", "{gpus}", "--nodes", "{nodes}"]\n'
    (copy / "projects/demo/project.toml").write_text(toml)
    assert manifest_cli(copy, "launch", "demo", "4", "py").stdout.split() == [
        "py",
        "projects/demo/train.py",
        "train",
        "--gpus",
        "4",
        "--nodes",
        "1",
    ]
    assert manifest_cli(copy, "launch", "demo", "").stdout.split() == ["python3", "projects/demo/train.py", "train"]
    assert manifest_cli(copy, "layout", "demo", "2", "8").stdout.split() == ["--gpus", "8", "--nodes", "2"]
    (copy / "projects/demo/project.toml").write_text(toml.replace('"self"', '"torchrun"'))
    launch = manifest_cli(copy, "launch", "demo", "2").stdout.split()
    assert launch[:5] == ["python3", "-m", "eurosat.torchrun", "--standalone", "--nproc_per_node=2"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('image = "lightning"\n[launch]\nlauncher = "torchrun"\n', "missing description"),
        ('description = "d"\n[launch]\nlauncher = "torchrun"\n', "missing image"),
        ('description = "d"\nimage = "lightning"\n', "missing launch"),
        (
            'description = "d"\nimage = "pytorch"\n[launch]\nlauncher = "torchrun"\n',
            "image = 'pytorch' is not an image; images: ",
        ),
        (
            'description = "d"\nimage = "lightning"\n[launch]\nlauncher = "mpirun"\n',
            "launch.launcher = 'mpirun'; use one of: torchrun, self",
        ),
        ('description = "d"\nimage = "lightning"\n[launch]\nlauncher = "self"\n', 'launcher = "self" needs launch.layout_flags'),
        ('description = "d"\nimage = "lightning"\ngpus = 2\n[launch]\nlauncher = "torchrun"\n', "unknown key gpus; keys: "),
        ('description = 3\nimage = "lightning"\n[launch]\nlauncher = "torchrun"\n', "description must be a str, not 3"),
        ("description = \n", "not valid TOML"),
    ],
)
def test_an_incomplete_or_wrong_manifest_is_one_line(copy, toml, message):
    (copy / "projects/demo").mkdir()
    (copy / "projects/demo/train.py").write_text("")
    (copy / "projects/demo/project.toml").write_text(toml)
    result = manifest_cli(copy, "check", "demo")
    assert result.returncode == 2 and result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {copy / 'projects/demo/project.toml'}: ") and message in line, line


def test_unknown_project_and_a_manifest_without_train_py(copy):
    result = manifest_cli(copy, "image", "nope")
    assert (
        result.returncode == 2
        and result.stderr == f"error: unknown project 'nope': no projects/nope/project.toml; projects: {', '.join(PROJECTS)}\n"
    )
    (copy / "projects/lonely").mkdir()
    shutil.copy(copy / "projects" / PROJECTS[0] / "project.toml", copy / "projects/lonely")
    (copy / "projects/lonely/project.toml").write_text(
        (copy / "projects/lonely/project.toml").read_text().replace("default = true", "")
    )
    result = manifest_cli(copy, "check", "lonely")
    assert result.returncode == 2 and "projects/lonely has a project.toml but no train.py" in result.stderr
