"""make push against a real registry (Debian's docker-registry, the CNCF distribution server, on loopback):
each image's digest is recorded as the registry serves it, and make cluster-files pins the image by it."""

import io
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request

import pytest
from engine import DOCKER, HIERARCHY, IMAGES, STANDINS, docker, free_port, make
from helpers import REPO, run, wait_until_serving

from eurosat import manifest

PREFIX = "eurosat-push-test/"  # small stand-ins for the images: pushing torch's layers would take minutes
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


@pytest.fixture
def registry(tmp_path):
    """host:port of a registry that keeps its blobs in tmp_path."""
    if not shutil.which("docker-registry"):
        pytest.fail("Debian's docker-registry is not installed (.ci/run installs it)")
    port = free_port()
    config = tmp_path / "config.yml"
    config.write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path / 'blobs'}\n"
                      f"http:\n  addr: 127.0.0.1:{port}\n")  # fmt: skip
    server = subprocess.Popen(["docker-registry", "serve", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_until_serving(f"http://127.0.0.1:{port}/v2/", server, "docker-registry", seconds=30)
    yield f"127.0.0.1:{port}"
    server.terminate()
    server.wait()
    references = docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    pushed = [r for r in references if r.startswith(f"127.0.0.1:{port}/")]
    if pushed:  # make push tagged them for this registry
        docker("rmi", *pushed, check=False)


def labelled(image: str, parent_reference: str) -> list[str]:
    """The labels make's build gives `image` on that parent (what makes it fresh for this tree)."""
    labels = run(sys.executable, "scripts/stale_images.py", "labels", image, parent_reference, "--prefix", PREFIX).stdout
    return [f"LABEL {label}" for label in labels.split("--label ") if label.strip()]


@pytest.fixture
def small_images():
    """Every image of the hierarchy as a one-file image, tagged as make tags them (<git sha> and latest), labelled as
    make's builds label them, each on its parent (a root base: the stand-in's)."""
    sha = run("git", "rev-parse", "--short", "HEAD").stdout.strip()
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        data = f"pushed by the tests at {time.time()}\n".encode()  # a new digest on every run
        info = tarfile.TarInfo("stand-in.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    subprocess.run([DOCKER, "import", "-", f"{PREFIX}base:latest"], input=layer.getvalue(), check=True, capture_output=True)
    for image in IMAGES:
        parent = HIERARCHY.parents[image]
        reference = f"{PREFIX}{parent}:latest" if parent in IMAGES else STANDINS[parent]
        dockerfile = "\n".join([f"FROM {PREFIX}base:latest", *labelled(image, reference)]) + "\n"
        subprocess.run([DOCKER, "build", "--quiet", "--tag", f"{PREFIX}{image}:latest", "-"], input=dockerfile.encode(),
                       check=True, capture_output=True)  # fmt: skip
        docker("tag", f"{PREFIX}{image}:latest", f"{PREFIX}{image}:{sha}")
    yield sha
    references = docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    docker("rmi", *[r for r in references if PREFIX in r], check=False)


def served_digest(registry: str, image: str, tag: str) -> str:
    request = urllib.request.Request(f"http://{registry}/v2/team/{image}/manifests/{tag}", headers={"Accept": MANIFEST_V2})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Docker-Content-Digest"]


def test_make_push_records_the_registrys_digests_and_cluster_files_pin_by_them(registry, small_images, tmp_path):
    pushed = tmp_path / "pushed-images.txt"
    make("push", f"REGISTRY={registry}/team", f"IMAGE_PREFIX={PREFIX}", f"PUSHED={pushed}")
    sha = small_images
    recorded = dict(line.split() for line in pushed.read_text().splitlines())
    assert sorted(recorded) == sorted(f"{registry}/team/{image}:{sha}" for image in IMAGES)
    for image in IMAGES:
        digest = served_digest(registry, image, sha)
        assert digest.startswith("sha256:") and served_digest(registry, image, "latest") == digest
        assert recorded[f"{registry}/team/{image}:{sha}"] == f"{registry}/team/{image}@{digest}"

    project = manifest.default_project()
    image = manifest.load(project).image
    result = make(
        "cluster-files", f"PROJECT={project}", "NODES=2", f"REGISTRY={registry}/team", f"PUSHED={pushed}", "ARGS=--no-pretrained"
    )  # fmt: skip (random weights: nothing for the host to fetch offline)
    digest = served_digest(registry, image, sha)
    assert f"image {registry}/team/{image}@{digest}: pinned by digest" in result.stdout
    script = (REPO / "build" / "cluster" / f"{project}-2x1" / "slurm.sbatch").read_text()
    assert f"ENROOT_IMAGE='{registry}#team/{image}:{digest}'" in script


def test_make_push_refuses_an_image_that_is_not_this_trees(registry, small_images, tmp_path):
    """A stale image (its inputs changed since it was built) or one built some other way (no labels) is refused in
    one line before anything is pushed: a cluster must never run what no commit describes."""
    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images)
    (images / "common" / "entrypoint.sh").write_text((images / "common" / "entrypoint.sh").read_text() + "# changed\n")
    pushed = tmp_path / "pushed-images.txt"
    stale = make("push", f"REGISTRY={registry}/team", f"IMAGE_PREFIX={PREFIX}", f"PUSHED={pushed}", f"IMAGES_DIR={images}",
                 check=False)  # fmt: skip
    first = IMAGES[0]
    assert stale.returncode != 0 and not pushed.exists()
    assert f"error: {PREFIX}{first}:latest is stale: images/{first}/ or images/common/ changed since it was built" in stale.stderr
    assert "make push sends only images of this tree" in stale.stderr
    docker("tag", f"{PREFIX}base:latest", f"{PREFIX}{IMAGES[-1]}:latest")  # unlabelled: built without make
    unlabelled = make("push", f"REGISTRY={registry}/team", f"IMAGE_PREFIX={PREFIX}", f"PUSHED={pushed}", check=False)
    assert unlabelled.returncode != 0 and not pushed.exists()
    assert f"error: {PREFIX}{IMAGES[-1]}:latest is stale" in unlabelled.stderr
