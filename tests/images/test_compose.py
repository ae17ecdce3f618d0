"""make notebook / down, compose validation, layer caching and bad input, against the real engine."""

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import websocket
from engine import DOCKER, IMAGES, docker, free_port, image_id, make, make_settings, remove_tags, write_dotenv
from helpers import REPO, copy_repository, make_in_clone

from eurosat import manifest


def status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


@pytest.fixture(scope="module")
def repo_copy(tmp_path_factory):
    """The notebook tests work in a copy of the repository: its .env and notebooks/ are theirs, not the developer's."""
    return copy_repository(tmp_path_factory.mktemp("notebook") / "repo")


def make_in(root, *args, check=True):
    return make_in_clone(root, *args, *make_settings(), check=check)


@pytest.fixture
def dotenv(repo_copy):
    """(the copy, free ports): a fresh .env in the copy, with free ports and no token yet."""
    yield repo_copy, write_dotenv(repo_copy, "JUPYTER_PORT", "TENSORBOARD_PORT")
    make_in(repo_copy, "down", check=False)
    (repo_copy / ".env").unlink(missing_ok=True)


def running_containers() -> list[str]:
    return docker("ps", "--quiet", "--filter", "label=com.docker.compose.project=eurosat").stdout.split()


def in_terminal(port: int, token: str, command: str, seconds: float = 60) -> str:
    """What `command` prints in a JupyterLab terminal (the REST API opens one, its websocket types into it)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/terminals?token={token}", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        name = json.loads(response.read())["name"]
    socket = websocket.create_connection(f"ws://127.0.0.1:{port}/terminals/websocket/{name}?token={token}", timeout=seconds)
    socket.settimeout(seconds)  # each receive: a command that waits (a pager, a prompt) fails the test, not hangs it
    try:
        socket.send(json.dumps(["stdin", f"{command}; echo END-$((6*7))\r"]))  # the marker's echo is not the marker
        output, deadline = "", time.monotonic() + seconds
        while "END-42" not in output and time.monotonic() < deadline:
            try:
                message = json.loads(socket.recv())
            except websocket.WebSocketTimeoutException:
                break
            output += message[1] if message[0] == "stdout" else ""
        assert "END-42" in output, f"the terminal did not finish {command!r}: {output!r}"
        return output[: output.index("END-42")]
    finally:
        socket.close()
        urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/api/terminals/{name}?token={token}",
                                                      method="DELETE"), timeout=10)  # fmt: skip


# A user's first commit from the lab's terminal: git finds their name in the passwd entry the image gave their UID
FIRST_COMMIT = (
    "whoami && cd /workspace/notebooks && git init -q probe-repo && cd probe-repo && echo x >notes.txt && git add notes.txt"
    " && git -c user.email=you@example.org commit -qm first && git --no-pager log --format=author=%an"
)


def test_make_notebook_serves_jupyter_with_a_token_and_tensorboard(built_images, dotenv):
    """Also as the user would find it: before any data exists (the mounted data folder is made as the host user),
    with a terminal that knows who they are and can commit."""
    root, dotenv = dotenv
    shutil.rmtree(root / "data", ignore_errors=True)
    result = make_in(root, "notebook")
    assert (root / "data" / "eurosat").stat().st_uid == os.getuid()  # not root's: make data can write there
    token = re.search(r"^JUPYTER_TOKEN=([0-9a-f]{48})$", (root / ".env").read_text(), re.M).group(1)
    assert oct((root / ".env").stat().st_mode & 0o777) == "0o600"
    url = f"http://127.0.0.1:{dotenv['JUPYTER_PORT']}/lab?token={token}"
    assert url in result.stdout
    assert status(url) == 200
    assert status(f"http://127.0.0.1:{dotenv['JUPYTER_PORT']}/api/contents") == 403  # no token, no access
    assert status(f"http://127.0.0.1:{dotenv['JUPYTER_PORT']}/api/contents?token=wrong") == 403
    for _ in range(30):  # TensorBoard needs a moment to read the runs folder
        if status(f"http://127.0.0.1:{dotenv['TENSORBOARD_PORT']}/") == 200:
            break
        time.sleep(1)
    assert status(f"http://127.0.0.1:{dotenv['TENSORBOARD_PORT']}/") == 200
    notebook = docker("ps", "--quiet", "--filter", "label=com.docker.compose.service=notebook").stdout.split()
    assert docker("inspect", "--format", "{{.State.Health.Status}}", *notebook).stdout.strip() == "healthy"
    published = docker("port", *notebook, "8888").stdout
    assert published.startswith("127.0.0.1:")  # private to this machine by default
    typed = in_terminal(dotenv["JUPYTER_PORT"], token, FIRST_COMMIT)
    lines = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", typed).replace("\r", "").split("\n")  # (bash's escapes)
    assert "app" in lines and "author=app" in lines, typed
    written = [root / "notebooks" / "probe-repo", *(root / "notebooks" / "probe-repo").rglob("*")]
    assert {path.stat().st_uid for path in written} == {os.getuid()}
    shutil.rmtree(root / "notebooks" / "probe-repo")

    (root / "notebooks" / "probe-survives-down.ipynb").write_text("{}")
    try:
        make_in(root, "down")
        assert running_containers() == []
        assert (root / "notebooks" / "probe-survives-down.ipynb").read_text() == "{}"
        make_in(root, "data-sample")  # into the data folder the notebook's mount found missing
    finally:
        (root / "notebooks" / "probe-survives-down.ipynb").unlink()


SCANNED = ("/etc", "/home", "/opt", "/usr/local", "/root", "/workspace", "/tmp")  # the folders the Dockerfiles write


def stored_layers(image: str) -> list[Path] | None:
    """The folders in which the engine keeps `image`'s layers (overlay2: one per layer, shared by the images built
    on it), or None where it stores them otherwise or this process may not read them."""
    driver = json.loads(docker("image", "inspect", "--format", "{{json .GraphDriver}}", image).stdout)
    if driver.get("Name") != "overlay2":
        return None
    data = driver["Data"]
    layers = [Path(data["UpperDir"]), *(Path(d) for d in data.get("LowerDir", "").split(":") if d)]
    return layers if all(os.access(layer, os.R_OK | os.X_OK) for layer in layers) else None


def test_the_token_is_in_no_image(built_images, dotenv):
    """The token lives in .env (git-ignored, mode 600) and reaches Jupyter at run time only: no image's
    history, config or files (the folders the Dockerfiles write) contain it. The files are read layer by layer
    where the engine's overlay2 folders can be read (root, as in CI), each shared layer once: the four images
    share the 9 GB of the NGC base and torch, which a grep inside each image would read three or four times.
    (Stricter, too: a file that a later layer deletes is still read.) Elsewhere, grep runs inside each image."""
    root, _ = dotenv
    make_in(root, "notebook")
    token = re.search(r"^JUPYTER_TOKEN=([0-9a-f]{48})$", (root / ".env").read_text(), re.M).group(1)
    assert subprocess.run(["git", "check-ignore", "--quiet", ".env"], cwd=root).returncode == 0
    layers, unread = {}, []
    for name in IMAGES:
        image = f"eurosat/{name}:latest"
        assert token not in docker("history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
        assert token not in docker("image", "inspect", image).stdout
        stored = stored_layers(image)
        if stored is None:
            unread.append(image)
        else:
            layers.update(dict.fromkeys(stored))
    folders = [layer / folder.lstrip("/") for layer in layers for folder in SCANNED]
    folders = [folder for folder in folders if folder.is_dir() and not folder.is_symlink()]
    if folders:  # (grep without a path would read its stdin)
        scan = subprocess.run(["grep", "-rlF", "--devices=skip", token, *folders], capture_output=True, text=True)
        assert scan.returncode == 1 and scan.stdout == "", (scan.stdout, scan.stderr[-3000:])  # 1: grep found nothing
    for image in unread:
        scan = docker("run", "--rm", "--user", "0", "--entrypoint", "grep", image, "-rlF", "--devices=skip", token,
                      *SCANNED, check=False)  # fmt: skip
        assert scan.returncode == 1 and scan.stdout == "", (image, scan.stdout, scan.stderr)


def test_jupyter_without_a_token_still_requires_one(built_images):
    port = free_port()
    container = docker(
        "run", "--detach", "--rm", "--env", "JUPYTER_TOKEN=", "--publish", f"127.0.0.1:{port}:8888", "eurosat/jupyter:latest"
    ).stdout.strip()  # fmt: skip
    try:
        for _ in range(60):
            if "token=" in docker("logs", container).stderr:
                break
            time.sleep(1)
        logs = docker("logs", container).stderr
        generated = re.search(r"token=([0-9a-f]{48})", logs).group(1)  # Jupyter made its own random token
        assert status(f"http://127.0.0.1:{port}/api/contents") == 403
        assert status(f"http://127.0.0.1:{port}/api/contents?token={generated}") == 200
    finally:
        docker("rm", "--force", container, check=False)


def test_make_needs_no_sudo():
    sources = [REPO / "Makefile", *REPO.glob("scripts/**/*.sh"), *REPO.glob("scripts/cluster/*.in"), REPO / ".ci" / "run"]
    users = [path.name for path in sources if re.search(r"\bsudo\b", path.read_text())]
    assert users == []  # .ci/run installs the engine as root, without sudo too


def test_busy_port_is_one_clear_line(built_images, dotenv):
    root, dotenv = dotenv
    with socket.create_server(("127.0.0.1", dotenv["JUPYTER_PORT"])):
        result = make_in(root, "notebook", check=False)
    assert result.returncode != 0
    assert f"error: port {dotenv['JUPYTER_PORT']} (JUPYTER_PORT in .env)" in result.stderr
    assert running_containers() == []


def test_missing_env_value_is_one_clear_line(built_images, dotenv):
    root, _ = dotenv
    (root / ".env").write_text(re.sub(r"^TENSORBOARD_PORT=.*$", "TENSORBOARD_PORT=", (root / ".env").read_text(), flags=re.M))
    result = make_in(root, "notebook", check=False)
    assert result.returncode != 0
    assert "error: TENSORBOARD_PORT has no value in .env" in result.stderr


def test_changing_the_jupyter_lock_rebuilds_only_that_layer(built_images, tmp_path):
    images = tmp_path / "images"  # a copy: tests never edit the working tree
    shutil.copytree(REPO / "images", images)
    lock = images / "jupyter" / "requirements.lock"
    lock.write_text(lock.read_text() + f"# a change to the jupyter layer only, {time.time()}\n")  # unique: no cache hit
    parents = {name: image_id(name) for name in ("torch-ngc", "lightning")}
    try:
        start = time.perf_counter()
        result = make("image-jupyter", f"IMAGES_DIR={images}")
        warm = time.perf_counter() - start
        print(f"\nwarm rebuild of jupyter after a lock change: {warm:.0f} s (cold make images: {built_images['seconds']:.0f} s)")
        assert {name: image_id(name) for name in parents} == parents  # the parents were not rebuilt
        assert image_id("jupyter") != built_images["ids"]["jupyter"]
        log = result.stdout + result.stderr
        assert "FROM docker.io/eurosat/lightning:latest" in log and "image-lightning" not in log
        install_step = re.search(r"^(#\d+) \[.*\] RUN .*install-layer", log, re.M).group(1)
        assert f"{install_step} CACHED" not in log  # the jupyter layer's install really ran again
    finally:
        make("image-jupyter")  # back to the repository's own lock


def test_a_stale_layer_and_the_layers_on_it_are_rebuilt_before_a_container_runs(built_images, tmp_path):
    """make doctor (as make train, notebook, shell, mlflow, execute, train-nodes) compares each layer's recorded inputs
    and parent with the tree first: after an edit of lightning's lock it rebuilds lightning, not torch-ngc; jupyter,
    built on the lightning that is gone, is stale too; NO_BUILD=1 refuses in one line instead of building."""
    prefix = "eurosat-stale/"  # images of their own names: the others' stay as they are
    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images)
    settings = [f"IMAGE_PREFIX={prefix}", f"IMAGES_DIR={images}", "PROJECT=eurosat-lightning"]

    def ids() -> dict[str, str]:
        return {layer: docker("images", "--quiet", "--no-trunc", f"{prefix}{layer}:latest").stdout.strip()
                for layer in ("torch-ngc", "lightning", "jupyter")}  # fmt: skip

    try:
        make("image-jupyter", *settings)  # every layer under these names
        before = ids()
        fresh = make("doctor", *settings)
        assert "rebuilding" not in fresh.stderr and ids() == before
        lock = images / "lightning" / "requirements.lock"
        lock.write_text(lock.read_text() + f"# a change to the lightning layer, {time.time()}\n")  # unique: no cache hit
        why = "images/lightning/ or images/common/ changed since it was built (its Dockerfile, lock or scripts)"
        refused = make("doctor", *settings, "NO_BUILD=1", check=False)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr
        assert f"error: {prefix}lightning:latest is stale: {why}; NO_BUILD is set: run 'make image-lightning'" in refused.stderr
        # where users look when something is wrong: the table still comes, that row failing, from the image as it is
        training = next(line for line in refused.stdout.splitlines() if line.startswith("training image"))
        assert training.split()[2] == "FAIL" and f"{prefix}lightning:latest is stale: {why}" in training
        assert "torch.cuda" in refused.stdout
        assert ids() == before
        result = make("doctor", *settings)
        assert f"rebuilding {prefix}lightning:latest: {why}" in result.stderr and "torch-ngc:latest: " not in result.stderr
        after = ids()
        assert after["torch-ngc"] == before["torch-ngc"] and after["lightning"] != before["lightning"]
        shell = make("shell", "IMAGE=jupyter", *settings, "NO_BUILD=1", check=False)
        assert shell.returncode != 0
        assert (f"error: {prefix}jupyter:latest is stale: built on another {prefix}lightning:latest than the one there "
                "now; NO_BUILD is set: run 'make image-jupyter'") in shell.stderr  # fmt: skip
    finally:
        remove_tags(f"{prefix}*")


def test_a_tampered_hash_in_an_image_lock_fails_the_build(built_images, tmp_path):
    from test_lock import tamper_hashes

    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images)
    lock = images / "lightning" / "requirements.lock"
    tampered, package = tamper_hashes(lock.read_text(), "pytorch-lightning")
    lock.write_text(tampered)
    before = image_id("lightning")
    result = make("image-lightning", f"IMAGES_DIR={images}", check=False)
    log = result.stdout + result.stderr
    assert result.returncode != 0
    assert "THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE" in log and package in log
    assert image_id("lightning") == before  # the previous image stays in place


def test_compose_files_validate(built_images):
    env = {**os.environ, "REPO_DIR": str(REPO), "DATA_DIR": str(REPO / "data"), "CACHE_DIR": str(REPO / ".cache")}
    env["MODEL_DIR"], env["WEIGHTS_LOCK"] = str(REPO / ".cache"), str(REPO / "weights.lock")
    env["PROJECT"] = manifest.default_project()  # make passes these
    compose = str(REPO / ".venv" / "bin" / "compose-v2")  # the binary itself: its Python wrapper drops exit codes
    gpu_files = [["compose/compose.yaml", f"compose/gpu.{how}.yaml"] for how in ("nvidia", "cdi")]
    for files in (["compose/compose.yaml"], *gpu_files):
        flags = [flag for name in files for flag in ("-f", name)]
        result = subprocess.run(
            [compose, "--project-directory", ".", *flags, "config", "--quiet"], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr


def test_hadolint_passes_on_every_dockerfile():
    dockerfiles = sorted(str(p) for p in (REPO / "images").glob("*/Dockerfile"))
    assert len(dockerfiles) == 4
    result = subprocess.run([str(REPO / ".venv" / "bin" / "hadolint"), *dockerfiles], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout


def test_no_engine_is_one_clear_line():
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    result = subprocess.run(["make", "image-ngc", f"DOCKER={DOCKER}"], cwd=REPO, capture_output=True, text=True, env=env)
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: no Docker engine answers ('{DOCKER} info' failed): start Docker, or train with RUNNER=local"
    ]


def test_a_failing_container_run_fails_make(built_images, tmp_path):
    (tmp_path / "empty").mkdir()
    # random weights: a pretrained run would first stop at the host's weights step, offline here
    result = make("train", "RUNNER=docker", f"DATA={tmp_path / 'empty'}", "ARGS=--epochs 1 --no-pretrained", check=False)
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        "error: no EuroSAT class folders with .tif or .jpg images under /data: run `make data` (EuroSAT) or "
        "`make data-sample` (synthetic sample), or pass --data PATH"
    ]
    result = make("train", "RUNNER=docker", f"DATA={tmp_path / 'missing'}", check=False)
    assert result.returncode != 0 and "is not a directory" in result.stderr
    assert not (tmp_path / "missing").exists()  # docker did not create it as an empty root-owned folder


def test_unknown_project_with_the_container_runner():
    result = make("train", "RUNNER=docker", "PROJECT=nope", check=False)
    assert result.returncode != 0
    assert "error: unknown project 'nope': no projects/nope/project.toml; projects: " in result.stderr
