"""The dev container (.devcontainer/devcontainer.json), brought up by the Dev Containers CLI against the engine."""

import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from engine import DOCKER, docker, make_settings
from helpers import MODEL, REPO, copy_repository

from eurosat import manifest
from eurosat.sample import write_sample

DEV_USER = "eurosat-dev"
FAST_TESTS = ["tests/test_manifest.py", "tests/test_split.py", "tests/test_reading.py"]


@pytest.fixture(scope="module")
def host_user() -> pwd.struct_passwd:
    """Who opens the dev container. The image's user is remapped to the host user's ids unless that user is
    root, so under root (CI) a non-root user in the engine's socket group plays the developer."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.getuid())
    socket_group = grp.getgrgid(os.stat("/var/run/docker.sock").st_gid).gr_name
    if subprocess.run(["id", DEV_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--groups", socket_group, DEV_USER], check=True)
    return pwd.getpwnam(DEV_USER)


@pytest.fixture(scope="module")
def workspace(built_images, host_user):
    """A copy of the repository the host user owns, with the CLI and a sample in data/eurosat (the mounted /data)."""
    root = Path(tempfile.mkdtemp(prefix="devcontainer-", dir=host_user.pw_dir))
    copy_repository(root)
    shutil.copytree(REPO / "node_modules", root / "node_modules", symlinks=True)
    write_sample(root / "data" / "eurosat", fraction=0.02)
    subprocess.run(["chown", "-R", f"{host_user.pw_uid}:{host_user.pw_gid}", root], check=True)
    yield root
    label = f"devcontainer.local_folder={root}"
    for container in docker("ps", "--all", "--quiet", "--filter", f"label={label}").stdout.split():
        image = docker("inspect", "--format", "{{.Config.Image}}", container).stdout.strip()
        docker("rm", "--force", container, check=False)
        docker("rmi", image, image.removesuffix("-uid"), check=False)  # the CLI's image and its UID-remapped one
    shutil.rmtree(root)


def make_env() -> dict[str, str]:
    """This process's environment with make's settings for this machine (the stand-in bases), for what calls make."""
    return {**os.environ, **dict(setting.split("=", 1) for setting in make_settings())}


def as_host_user(user, workspace, subcommand, *args, timeout=900) -> subprocess.CompletedProcess:
    """The Dev Containers CLI, run by the host user from the workspace, as a developer runs it."""
    env = {**make_env(), "HOME": user.pw_dir, "USER": user.pw_name, "DOCKER_BUILDKIT": "1"}  # make: initializeCommand
    prefix = ["runuser", "-u", user.pw_name, "--"] if os.geteuid() != user.pw_uid else []
    cli = [workspace / "node_modules" / ".bin" / "devcontainer", subcommand, "--workspace-folder", workspace]
    command = [*prefix, *cli, "--docker-path", DOCKER, *args]
    result = subprocess.run(command, cwd=workspace, env=env, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        output = f"{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        raise AssertionError(f"devcontainer {subcommand} exited {result.returncode}\n{output}")
    return result


@pytest.fixture(scope="module")
def devcontainer(host_user, workspace):
    """`devcontainer up`: the container's id, as the CLI reports it."""
    up = as_host_user(host_user, workspace, "up")
    outcome = json.loads(up.stdout.strip().splitlines()[-1])
    assert outcome["outcome"] == "success", up.stdout
    assert outcome["remoteWorkspaceFolder"] == "/workspace"
    return outcome["containerId"]


def in_devcontainer(host_user, workspace, *command) -> str:
    return as_host_user(host_user, workspace, "exec", *command).stdout


def test_the_dev_container_runs_as_the_host_user_with_compose_settings(host_user, workspace, devcontainer):
    ids = in_devcontainer(host_user, workspace, "bash", "-c", "id -u; id -g; ulimit -s; df --output=size -B1M /dev/shm | tail -1")
    uid, gid, stack_kib, shm_mib = ids.split()
    assert (int(uid), int(gid)) == (host_user.pw_uid, host_user.pw_gid)
    assert int(stack_kib) * 1024 == 67108864 and int(shm_mib) == 8192  # compose's stack ulimit and shm_size
    config = json.loads(docker("inspect", devcontainer).stdout)[0]
    mounts = {mount["Destination"]: mount for mount in config["Mounts"]}
    assert mounts["/workspace"]["Source"] == str(workspace) and mounts["/workspace"]["RW"]
    assert mounts["/data"]["Source"] == str(workspace / "data" / "eurosat") and not mounts["/data"]["RW"]
    assert mounts["/cache"]["Source"] == str(workspace / ".cache" / "eurosat") and mounts["/cache"]["RW"]
    assert mounts["/models"]["Source"] == str(workspace / ".cache" / "models") and mounts["/models"]["RW"]
    env = dict(line.split("=", 1) for line in config["Config"]["Env"])
    assert env["HF_HOME"] == "/models/huggingface" and env["TORCH_HOME"] == "/models/torch"
    assert env["TORCHINDUCTOR_CACHE_DIR"] == "/models/inductor" and env["TRITON_CACHE_DIR"] == "/models/triton"
    assert env["EUROSAT_CACHE_DIR"] == "/cache" and env["PYTHONPATH"] == "/workspace/src"


def test_the_dev_container_trains_an_epoch_into_runs_as_the_host_user(host_user, workspace, devcontainer):
    project = manifest.default_project()
    train = [f"projects/{project}/train.py", "train", "--data", "/data", "--epochs", "1", "--model", MODEL, "--no-pretrained"]
    out = in_devcontainer(host_user, workspace, "python3", *train, "--batch-size", "16")
    assert "Epoch 1/1 loss" in out, out
    written = [path for path in (workspace / "runs").rglob("*")]
    assert any(path.name == "last.ckpt" for path in written), written
    assert {(path.stat().st_uid, path.stat().st_gid) for path in written} == {(host_user.pw_uid, host_user.pw_gid)}
    assert any((workspace / ".cache" / "eurosat").iterdir())  # the prepared cache landed on the host, mounted at /cache


def test_the_editor_test_command_passes_in_the_dev_container(host_user, workspace, devcontainer):
    """What VS Code runs: the configured interpreter, pytest with the configured arguments (on a fast subset)."""
    lines = (REPO / ".devcontainer" / "devcontainer.json").read_text().splitlines()
    config = json.loads("\n".join(line for line in lines if not line.lstrip().startswith("//")))  # JSON with comments
    settings = config["customizations"]["vscode"]["settings"]
    pytest_args = [*settings["python.testing.pytestArgs"], *FAST_TESTS, "-q", "-p", "no:cacheprovider"]
    out = in_devcontainer(host_user, workspace, settings["python.defaultInterpreterPath"], "-m", "pytest", *pytest_args)
    assert " passed" in out and "failed" not in out, out


def test_the_init_command_makes_the_mounted_folders_and_builds_a_missing_parent(built_images, tmp_path):
    """initializeCommand in a fresh copy whose dev container names a parent image this engine lacks."""
    root = copy_repository(tmp_path / "repo")
    config = root / ".devcontainer" / "devcontainer.json"
    config.write_text(config.read_text().replace('"eurosat/lightning:latest"', '"eurosat-devinit/lightning:latest"'))
    try:
        result = subprocess.run(
            ["bash", "scripts/devcontainer-init.sh"], cwd=root, env=make_env(), capture_output=True, text=True, timeout=1800
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert "eurosat-devinit/lightning:latest is not built yet" in result.stdout
        assert docker("image", "inspect", "eurosat-devinit/lightning:latest", check=False).returncode == 0
        assert all((root / folder).is_dir() for folder in ("data/eurosat", ".cache/eurosat", ".cache/models", "runs"))
    finally:
        tags = docker("image", "ls", "--format", "{{.Repository}}:{{.Tag}}", "eurosat-devinit/*").stdout.split()
        if tags:
            docker("rmi", *tags, check=False)
