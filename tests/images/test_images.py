"""The images, built by make on stand-in root bases and checked with real containers."""

import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from engine import (
    HIERARCHY,
    IMAGES,
    STANDIN_NGC,
    docker,
    image_id,
    make,
    make_settings,
    parent_image,
    remove_tags,
)
from helpers import MODEL, PROJECTS, REPO, SMALL, assert_same_weights, copy_repository, make_in_clone, script_module

from eurosat import manifest

stale_images = script_module(REPO / "scripts" / "stale_images.py", "stale_images")
OTHER_USER = "eurosat-builder"
# What each image adds; an image is checked for its own and its parents' (docker-stacks' parent map)
PACKAGES = {
    "cuda-base": ["torch", "torchvision"],
    "torch-ngc": ["torch", "torchvision", "timm", "skimage", "sklearn.model_selection", "tifffile", "tensorboard", "tqdm"],
    "lightning": ["pytorch_lightning", "torchmetrics"],
    "jupyter": ["jupyterlab", "nbclient", "ipykernel"],
}


def packages(image: str) -> list[str]:
    return [name for layer in HIERARCHY.lineage(image) for name in PACKAGES[layer]]


# A forward and backward pass, on timm's model where the image has timm (torchvision's otherwise).
BACKWARD = """
import torch, {module}
model = {model}
x = torch.randn(4, 3, 64, 64)
loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 3]))
loss.backward()
assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
probe["backward"] = float(loss)
"""
# One tiny Lightning epoch: fit, then validate, on random tensors.
FIT = """
import torch, pytorch_lightning as pl
class Tiny(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Linear(8, 2)
    def training_step(self, batch, _):
        return torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1])
    def validation_step(self, batch, _):
        self.log("val_loss", torch.nn.functional.cross_entropy(self.net(batch[0]), batch[1]))
    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)
data = torch.utils.data.TensorDataset(torch.randn(64, 8), torch.randint(0, 2, (64,)))
loader = torch.utils.data.DataLoader(data, batch_size=16)
trainer = pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                     default_root_dir="/tmp")
trainer.fit(Tiny(), loader, loader)
probe["fit"] = {"steps": trainer.global_step, "val_loss": float(trainer.callback_metrics["val_loss"])}
"""
# torch as the image has it, its user, HOME and its cache writable, pip check; then the blocks above. Printed last.
PROBE = """
import json, os, pathlib, pwd, subprocess, sys
probe = {{"uid": os.getuid(), "user": pwd.getpwuid(os.getuid()).pw_name, "home": os.environ["HOME"]}}
for path in ("~/.cache/probe", "~/probe"):
    pathlib.Path(path).expanduser().touch()
probe["pip_check"] = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True).stdout
{imports}
probe["torch"] = f"{{torch.__version__}} {{torch.__file__}}"
{blocks}
print(json.dumps(probe))
"""
TORCH = "import torch; print(torch.__version__, torch.__file__)"


def run_in(image: str, *command: str) -> str:
    return docker("run", "--rm", f"eurosat/{image}:latest", *command).stdout.strip()


@pytest.fixture(scope="module")
def probed(built_images):
    """image -> what PROBE found in one container of it: each container start and torch import costs seconds, and
    every check below reads the same answers."""
    found = {}

    def probe(image: str) -> dict:
        if image not in found:
            if "timm" in packages(image):
                blocks = [BACKWARD.format(module="timm", model="timm.create_model('resnet10t', num_classes=4)")]
            else:
                blocks = [BACKWARD.format(module="torchvision", model="torchvision.models.resnet18(num_classes=4)")]
            blocks += [FIT] if "pytorch_lightning" in packages(image) else []
            imports = "\n".join(f"import {name}" for name in packages(image))
            output = run_in(image, "python3", "-c", PROBE.format(imports=imports, blocks="".join(blocks)))
            found[image] = json.loads(output.splitlines()[-1])
        return found[image]

    return probe


@pytest.mark.parametrize("image", IMAGES)
def test_packages_import_and_pip_check_passes(probed, image):
    assert "No broken requirements" in probed(image)["pip_check"]  # (PROBE imports the packages first)


@pytest.mark.parametrize("image", IMAGES)
def test_a_model_trains_a_step_in_every_image(probed, image):
    assert probed(image)["backward"] > 0


@pytest.mark.parametrize("image", HIERARCHY.children("lightning"))
def test_lightning_fits_one_tiny_epoch(probed, image):
    assert probed(image)["fit"]["steps"] == 4 and probed(image)["fit"]["val_loss"] > 0


@pytest.fixture(scope="module")
def base_torch() -> str:
    return docker("run", "--rm", STANDIN_NGC, "python3", "-c", TORCH).stdout.strip()


@pytest.mark.parametrize("image", [image for image in IMAGES if HIERARCHY.root(image) == "NGC_BASE"])
def test_torch_is_the_base_images_own_build(probed, base_torch, image):
    assert probed(image)["torch"] == base_torch


@pytest.mark.parametrize("image", IMAGES)
def test_runs_as_the_non_root_user(probed, image):
    probe = probed(image)  # (HOME and its cache were written to)
    assert probe["uid"] != 0 and probe["user"] == "app" and probe["home"] == "/home/app"


# What a user's tools ask of their account: whoami and getpass (Lightning, MLflow), pwd (ssh, git), id's group name
WHO = """whoami; id -gn; python3 -c 'import getpass, os, pwd; print(getpass.getuser(), pwd.getpwuid(os.getuid()).pw_dir)'"""


@pytest.mark.parametrize("image", IMAGES)
def test_a_host_user_the_image_does_not_know_gets_a_name_and_home(built_images, image):
    """As every runner starts a container (compose's user:, make shell): the host user's UID and GID, unknown to the
    image, with its `app` group. The entrypoint gives them the image user's name and HOME, as docker-stacks does."""
    result = docker("run", "--rm", "--user", "4321:4321", "--group-add", "app", f"eurosat/{image}:latest", "bash", "-c", WHO)
    assert result.stdout.split("\n")[:3] == ["app", "app-host", "app /home/app"], result.stdout + result.stderr
    su = docker("run", "--rm", "--user", "4321:4321", "--group-add", "app", f"eurosat/{image}:latest",
                "bash", "-c", "grep -c pam_deny /etc/pam.d/su")  # fmt: skip
    assert su.stdout.strip() == "1"  # an entry the user wrote authenticates nobody: su refuses everyone


def test_make_shell_runs_as_the_host_user_with_git(built_images):
    """make shell CMD=...: the host user's ids, a name for them, the repository mounted, git at hand."""
    result = make("shell", "CMD=whoami && id -u && git --version && git -C /workspace rev-parse HEAD")
    name, uid, git, head = result.stdout.strip().splitlines()[-4:]
    assert (name, uid) == ("app", str(os.getuid())) and git.startswith("git version")
    assert head == subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()


def labels_of(image: str) -> dict[str, str]:
    return json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}", image).stdout)


def identity(layer: str) -> dict[str, str]:
    """What a layer's image should say of itself: each lock of its lineage, root first, and the commit."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    locks = {name: hashlib.sha256((REPO / "images" / name / "requirements.lock").read_bytes()).hexdigest()
             for name in reversed(HIERARCHY.lineage(layer))}  # fmt: skip
    return {"revision": head, "locks": locks}


@pytest.mark.parametrize("image", IMAGES)
def test_labels_and_environment_name_what_the_image_was_built_from(built_images, image):
    labels = labels_of(f"eurosat/{image}:latest")
    expected = identity(image)
    for layer, sha256 in expected["locks"].items():  # its own lock's and, inherited, its parents'
        assert labels[f"io.github.eurosat.lock.{layer}.sha256"] == sha256, layer
    assert labels["org.opencontainers.image.revision"] == expected["revision"]
    assert labels["org.opencontainers.image.base.digest"].startswith("sha256:")
    assert labels["io.github.eurosat.inputs.sha256"] == stale_images.inputs_hash(REPO / "images", image)
    parent = docker("image", "inspect", "--format", "{{.Id}}", parent_image(image)).stdout.strip()
    assert labels["io.github.eurosat.parent"] == parent
    for key in ("created", "base.name", "title"):
        assert labels[f"org.opencontainers.image.{key}"], key
    assert "org.opencontainers.image.source" not in labels  # IMAGE_SOURCE unset: never the checkout's path
    env = dict(line.split("=", 1) for line in run_in(image, "env").splitlines() if line.startswith("EUROSAT_IMAGE_"))
    assert env == {"EUROSAT_IMAGE_REVISION": expected["revision"],
                   "EUROSAT_IMAGE_LOCKS": " ".join(f"{layer}={sha}" for layer, sha in expected["locks"].items())}  # fmt: skip
    short_sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert image_id(image) == docker("image", "inspect", "--format", "{{.Id}}", f"eurosat/{image}:{short_sha}").stdout.strip()


@pytest.fixture(scope="module")
def other_user() -> pwd.struct_passwd:
    """A host user other than this one (another UID and GID), who may use the engine."""
    socket_group = grp.getgrgid(os.stat("/var/run/docker.sock").st_gid).gr_name
    if subprocess.run(["id", OTHER_USER], capture_output=True).returncode != 0:
        subprocess.run(["useradd", "--create-home", "--uid", "4242", "--user-group", "--groups", socket_group, OTHER_USER],
                       check=True)  # fmt: skip
    return pwd.getpwnam(OTHER_USER)


@pytest.mark.as_root
def test_every_user_builds_the_same_image(built_images, other_user):
    """No host-specific build argument: the same commit built by root (CI) and by another user (UID and GID 4242), each
    from a clone of their own, gives the same image ids (so the same layers): an image one colleague pushes is the
    one another would build. Run as root, to be both users."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to build as a second host user too (CI runs as root)")
    clone = Path(other_user.pw_dir) / "eurosat"
    shutil.rmtree(clone, ignore_errors=True)
    subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", REPO, clone], check=True)
    subprocess.run(["chown", "-R", f"{other_user.pw_uid}:{other_user.pw_gid}", clone], check=True)
    targets = ["image-cuda-base", "image-torch-ngc", "IMAGE_PREFIX=eurosat-uid/", *make_settings()]
    trust = {"GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}  # root in their clone
    ids = {}
    try:
        for who, prefix in (("root", []), (other_user.pw_name, ["runuser", "-u", other_user.pw_name, "--"])):
            env = {**os.environ, **trust, "HOME": "/root" if who == "root" else other_user.pw_dir}
            result = subprocess.run([*prefix, "make", *targets], cwd=clone, env=env, capture_output=True, text=True, timeout=1800)
            assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
            ids[who] = {layer: docker("image", "inspect", "--format", "{{.Id}}", f"eurosat-uid/{layer}:latest").stdout.strip()
                        for layer in ("cuda-base", "torch-ngc")}  # fmt: skip
            remove_tags("eurosat-uid/*")  # (tags only: the engine keeps images other tags name)
        print(f"\nimage ids, built by root and by {other_user.pw_name} (uid {other_user.pw_uid}): {ids}")
        assert ids["root"] == ids[other_user.pw_name]
    finally:
        shutil.rmtree(clone, ignore_errors=True)


@pytest.mark.parametrize("project", PROJECTS)
def test_make_train_in_a_container_writes_the_run_directory_on_the_host(built_images, project, sample_dir, tmp_path):
    image = manifest.load(project).image
    out = f"runs/image-test-{project}-{int(time.time())}"
    try:
        result = make(
            "train",
            "RUNNER=docker",
            f"PROJECT={project}",
            f"DATA={sample_dir}",
            f"ARGS=--epochs 1 --model {MODEL} --batch-size 32 --no-pretrained --out {out}",
        )
        assert "containers run on the CPU" in result.stderr  # no GPU here: the GPU override is left out
        (run_dir,) = (REPO / out).iterdir()
        for name in ("config.json", "metrics.jsonl", "metrics.json", "last.ckpt", "best.ckpt", "provenance.json"):
            assert (run_dir / name).is_file(), name
            assert (run_dir / name).stat().st_uid == os.getuid()  # the host user's files
        provenance = json.loads((run_dir / "provenance.json").read_text())
        expected = identity(image)
        assert provenance["container"] == {"in_container": True, "image": f"eurosat/{image}:latest", "image_id": image_id(image),
                                           "digest": None, **expected}  # fmt: skip
        assert provenance["lockfile"]["path"] == f"/opt/eurosat/{image}.lock"
        assert len(provenance["git"]["commit"]) == 40
    finally:
        shutil.rmtree(REPO / out, ignore_errors=True)


def test_make_reproduce_reruns_a_docker_run_in_the_image_it_ran_in(built_images, sample_dir):
    """A --deterministic run made through compose reruns through compose, in the image it recorded (by id), with its
    container paths (/data: DATA) as they were: identical metrics and weights, the same image id. A run whose image
    is gone is one line naming how to get it back, before anything runs."""
    project = manifest.default_project()
    out = f"runs/image-test-reproduce-{int(time.time())}"
    try:
        make("train", "RUNNER=docker", f"PROJECT={project}", f"DATA={sample_dir}",
             f"ARGS=--epochs 1 --model {MODEL} --batch-size 32 --no-pretrained --deterministic --out {out}")  # fmt: skip
        (run_dir,) = (REPO / out).iterdir()
        result = make("reproduce", f"RUN={run_dir}", f"DATA={sample_dir}")
        image = image_id(manifest.load(project).image)
        assert f"reproducing in image {image} (" in result.stdout and "through compose" in result.stdout
        assert "metrics: identical to the recorded run (timings excepted)" in result.stdout, result.stdout
        assert "same git commit, lockfile, container image, library versions and hardware" in result.stdout
        (new_dir,) = set((REPO / out).iterdir()) - {run_dir}
        recorded, new = (json.loads((d / "provenance.json").read_text()) for d in (run_dir, new_dir))
        assert new["container"]["image_id"] == recorded["container"]["image_id"] == image
        assert new["runner"]["name"] == "compose" and json.loads((new_dir / "config.json").read_text())["data"] == "/data"
        assert new_dir.stat().st_uid == os.getuid()
        assert_same_weights(new_dir / "last.ckpt", run_dir / "last.ckpt")

        gone = "sha256:" + "0" * 64
        recorded["container"]["image_id"] = gone
        (run_dir / "provenance.json").write_text(json.dumps(recorded))
        result = make("reproduce", f"RUN={run_dir}", f"DATA={sample_dir}", check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr
        (line,) = [line for line in result.stderr.splitlines() if not line.startswith("make")]  # (make's own aside)
        assert line.startswith(f"error: RUN={run_dir} ran in image {gone} (") and "which is no longer in this engine" in line
        assert f"git checkout {recorded['container']['revision']} && make image-" in line
        assert len(list((REPO / out).iterdir())) == 2  # nothing ran
    finally:
        shutil.rmtree(REPO / out, ignore_errors=True)


def test_local_and_container_runs_share_one_decoded_image_cache(built_images, sample_dir, tmp_path):
    """make gives both runners the same CACHE_DIR: a container run decodes into it, a venv run reads the same files."""
    cache, out = tmp_path / "cache", tmp_path / "runs"
    args = f"ARGS=--epochs 1 --model {MODEL} --batch-size 32 --no-pretrained --out {out}"
    make("train", "RUNNER=docker", f"DATA={sample_dir}", f"CACHE_DIR={cache}", args.replace(str(out), "runs/cache-test"))
    shutil.rmtree(REPO / "runs" / "cache-test", ignore_errors=True)
    (array,) = cache.glob("*.npy")
    decoded = array.stat()
    make("train", "RUNNER=local", f"DATA={sample_dir}", f"CACHE_DIR={cache}", args)
    assert sorted(path.name for path in cache.iterdir()) == sorted([array.name, array.with_suffix(".json").name,
                                                                    array.with_suffix(".lock").name])  # fmt: skip
    assert (array.stat().st_ino, array.stat().st_mtime_ns) == (decoded.st_ino, decoded.st_mtime_ns)  # read, not rebuilt
    (run_dir,) = out.iterdir()
    assert json.loads((run_dir / "config.json").read_text())["cache_dir"] is None  # the default, not a flag


def test_gpus_launches_torchrun_in_the_container(built_images, sample_dir):
    """GPUS=N starts N processes with torchrun (gloo on this CPU-only host); each image is counted once."""
    out = f"runs/image-test-torchrun-{int(time.time())}"
    try:
        make(
            "train",
            "RUNNER=docker",
            f"PROJECT={manifest.default_project()}",
            "GPUS=2",
            f"DATA={sample_dir}",
            f"ARGS=--epochs 1 --model {MODEL} --batch-size 32 --val-fraction 0.25 --no-pretrained --out {out}",
        )
        (run_dir,) = (REPO / out).iterdir()
        assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
        (record,) = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert record["val_samples"] == 135
    finally:
        shutil.rmtree(REPO / out, ignore_errors=True)


def test_a_scaffolded_project_trains_in_its_container(built_images, sample_dir, tmp_path):
    """make new-project in a copy of the repository, then make train in the image its manifest names."""
    clone = copy_repository(tmp_path / "repo")
    make_in_clone(clone, "new-project", "NAME=eurosat-third", f"FROM={PROJECTS[-1]}")
    args = f"ARGS=--epochs 1 {' '.join(SMALL)} --out runs/third"
    result = make_in_clone(clone, "train", "RUNNER=docker", "PROJECT=eurosat-third", f"DATA={sample_dir}", args, *make_settings())
    assert "Epoch 1/1 loss" in result.stdout
    (run_dir,) = (clone / "runs" / "third").iterdir()
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert provenance["container"]["image_id"] == image_id(manifest.load(PROJECTS[-1]).image)


def test_make_doctor_checks_the_host_the_engine_and_inside_the_image(built_images):
    result = make("doctor")
    rows = {line.split()[0]: line for line in result.stdout.splitlines()[2:-1]}
    assert "none on this host" in rows["GPUs"] and "training runs on the CPU" in rows["GPUs"]
    for check in ("Docker", "Compose", "BuildKit", "training", "torch.cuda", "/dev/shm", "memlock"):
        assert rows[check].split()[1 if check not in ("Docker", "training") else 2] == "ok", rows[check]
    # The engine's free space is the host's own: with the images built, too little of it only warns
    disk = re.search(r"^Disk +(\S+) +(\d+) GB free in /\S+ +(\d+) GB \(room for runs\)", rows["Disk"])
    assert disk, rows["Disk"]
    free, need = int(disk[2]), int(disk[3])  # free is rounded: at need itself either status is right
    assert disk[1] in ({"ok"} if free > need else {"warn"} if free < need else {"ok", "warn"}), rows["Disk"]
    assert f"eurosat/{manifest.load(manifest.default_project()).image}:latest" in rows["training"]
    assert "CPU (no GPU here)" in rows["torch.cuda"] and "8.0 GB" in rows["/dev/shm"]  # compose's shm_size
    assert result.stdout.splitlines()[-1] == "make doctor: nothing blocks `make train`"


def test_make_doctor_shows_a_stale_image_it_cannot_rebuild_as_a_row_of_its_table(built_images):
    """Where users look when something is wrong: the image is out of date (here: the NGC base moved) and its rebuild
    fails (the base cannot be pulled: no registry here): the table still comes, with that row failing. (A rebuild
    NO_BUILD=1 refuses: test_a_stale_layer_and_the_layers_on_it_are_rebuilt_before_a_container_runs.)"""
    project = manifest.default_project()
    image = manifest.load(project).image
    settings = [*make_settings(), "NGC_BASE=eurosat-absent/ngc:0"]
    before = image_id(image)
    result = subprocess.run(["make", "doctor", *settings], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]  # (make's status for a failed step)
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert rows["training"].split()[2] == "FAIL" and f"eurosat/{image}:latest is out of date: " in rows["training"]
    assert "cannot read the Python environment of eurosat-absent/ngc:0: docker: " in rows["training"]  # the engine's why
    assert "torch.cuda" in rows and "Docker" in rows  # the rest of the table, from the image as it is
    assert result.stdout.splitlines()[-1].startswith("make doctor: ") and "Traceback" not in result.stderr
    assert image_id(image) == before  # nothing rebuilt


def test_a_container_meant_to_see_the_hosts_gpus_stops_instead_of_training_on_the_cpu(built_images, sample_dir):
    """NGC's NVIDIA_VISIBLE_DEVICES=all (the stand-in sets it too) alone means nothing; the host's GPUs do."""
    project = manifest.default_project()
    image = f"eurosat/{manifest.load(project).image}:latest"
    assert "NVIDIA_VISIBLE_DEVICES=all" in docker("run", "--rm", image, "env").stdout
    command = [
        "python3",
        f"/workspace/projects/{project}/train.py",
        "train",
        "--data",
        "/data",
        "--out",
        "/tmp/runs",
        "--epochs",
        "1",
        *SMALL,
    ]
    mounts = ["-v", f"{REPO}:/workspace:ro", "-v", f"{sample_dir}:/data:ro", "-e", "PYTHONPATH=/workspace/src"]
    mounts += ["--user", f"{os.getuid()}:{os.getgid()}", "-w", "/tmp"]  # as compose runs it: the host user
    result = docker("run", "--rm", *mounts, "-e", "EUROSAT_HOST_GPUS=1", image, *command, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "error: --device auto: NVIDIA GPUs are here (the host's 1 NVIDIA GPU) but torch cannot use them: this container "
        "was started without them (the engine has neither the nvidia runtime nor CDI); run `make doctor` to see why, or "
        "pass --device cpu to train on the CPU anyway"
    ]
    result = docker("run", "--rm", *mounts, "-e", "EUROSAT_HOST_GPUS=1", image, *command, "--device", "cpu")
    assert "Epoch 1/1 loss" in result.stdout


def test_the_notebooks_run_top_to_bottom_inside_the_jupyter_image(built_images, sample_dir):
    """train.ipynb trains a run; explore.ipynb draws the data; results.ipynb the newest run (that one)."""
    make("execute", "NOTEBOOK=notebooks/train.ipynb", f"DATA={sample_dir}", timeout=900)
    newest = max((REPO / "runs" / "notebook").iterdir(), key=lambda p: p.stat().st_mtime)
    try:
        assert [json.loads(line)["epoch"] for line in (newest / "metrics.jsonl").read_text().splitlines()] == [1]
        for notebook in ("explore", "results"):  # each ends with a cell that asserts what it drew (a failure fails make)
            executed = make("execute", f"NOTEBOOK=notebooks/{notebook}.ipynb", f"DATA={sample_dir}", timeout=900)
            assert f"Executing notebooks/{notebook}.ipynb" in executed.stderr
    finally:
        shutil.rmtree(newest)
