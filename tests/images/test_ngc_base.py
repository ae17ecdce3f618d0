"""The NGC layers on an NGC-like base: locks solved against the base's own packages, used on another base where they
hold and re-solved into build/ where they do not, and nothing NVIDIA installed changed by any layer, by pip or by uv."""

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from engine import (
    DOCKER,
    HIERARCHY,
    IMAGES,
    STANDIN_NGC,
    STANDIN_NGC_RESTRICTED,
    docker,
    image_id,
    make,
    make_settings,
    parent_image,
    remove_tags,
)
from helpers import REPO

pytestmark = pytest.mark.xdist_group("ngc-base")  # images of their own names: make test-images runs it beside the rest
NGC_LAYERS = [image for image in IMAGES if HIERARCHY.root(image) == "NGC_BASE"]
PARENT = {image: parent_image(image) for image in NGC_LAYERS}


def pip_network() -> list[str]:
    """docker run options that let pip and uv in a container reach the index through a TLS-intercepting proxy."""
    ca = os.environ.get("PIP_CA")
    if not ca:
        return []
    return ["-v", f"{ca}:/run/ca.crt:ro", "-e", "PIP_CERT=/run/ca.crt", "-e", "SSL_CERT_FILE=/run/ca.crt"]


def sh(image: str, script: str, *options: str, check: bool = True):
    return docker("run", "--rm", *options, "--entrypoint", "sh", image, "-c", script, check=check, timeout=900)


def base_fingerprint(image: str, command: str) -> str:
    """images/common/base-fingerprint.py run by the image's own Python (the stand-in NGC does not have it)."""
    script = (REPO / "images" / "common" / "base-fingerprint.py").read_text()
    result = subprocess.run([DOCKER, "run", "--rm", "-i", "--entrypoint", "python3", image, "-", command],
                            input=script, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def freeze(image: str) -> dict[str, str]:
    return dict(line.split("==", 1) for line in base_fingerprint(image, "freeze").split())


@pytest.fixture(scope="module")
def base_packages(built_images) -> dict[str, str]:
    """What the stand-in NGC has installed, and what its /etc/pip/constraint.txt pins (the same set)."""
    pins = [line.split("==", 1) for line in sh(STANDIN_NGC, "cat /etc/pip/constraint.txt").stdout.split()]
    constraint = {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}  # PEP 503 names
    assert constraint["torch"] == "2.9.0a0+145a3a7bda.nv25.10" and constraint["numpy"] == "1.26.4"
    return constraint


def test_the_stand_in_behaves_like_ngc_for_pip(base_packages):
    probe = (
        "python3 --version; echo $PIP_CONSTRAINT; python3 -c 'import torch; print(torch.__version__)'; pip list | grep -ci nvidia"
    )
    python, constraint, torch, nvidia = sh(STANDIN_NGC, probe, check=False).stdout.split("\n")[:4]
    assert python.startswith("Python 3.12") and constraint == "/etc/pip/constraint.txt"
    assert torch == base_packages["torch"] and nvidia == "0"  # CUDA is not a pip package there, as on NGC
    assert len(base_packages) > 100


@pytest.mark.parametrize("layer", NGC_LAYERS)
def test_each_committed_lock_was_solved_against_the_base_it_is_built_on(built_images, layer):
    lock = (REPO / "images" / layer / "requirements.lock").read_text()
    assert re.search(r"^# base: (.+)$", lock, re.M).group(1) == base_fingerprint(PARENT[layer], "show")
    # what make lock-check takes as met by the base is what the base has
    met = re.search(r"^# met by the base: (.+)$", lock, re.M).group(1)
    installed = freeze(PARENT[layer])
    assert [pin for pin in met.split() if pin != "nothing"] == [f"{name}=={installed[name]}" for name in met_by_base(layer)]


def met_by_base(layer: str) -> list[str]:
    """The names of the layer's requirements its lock does not pin (sorted)."""
    source = (REPO / "images" / layer / "requirements.in").read_text()
    names = {re.sub(r"[-_.]+", "-", name).lower() for name in re.findall(r"^([A-Za-z0-9_.-]+)", source, re.M)}
    return sorted(names - set(pins((REPO / "images" / layer / "requirements.lock").read_text())))


@pytest.mark.parametrize("layer", NGC_LAYERS)
def test_no_package_of_the_base_changed_in_any_layer(base_packages, layer):
    installed = freeze(f"eurosat/{layer}:latest")
    changed = {name: (version, installed.get(name)) for name, version in base_packages.items() if installed.get(name) != version}
    assert changed == {}
    assert installed["numpy"] == "1.26.4"
    lock = (REPO / "images" / layer / "requirements.lock").read_text()
    assert not [name for name in base_packages if re.search(rf"^{re.escape(name)}==", lock, re.M)]  # only what NGC lacks


def one_error(log: str, prefix: str) -> str:
    """The one error line starting with `prefix` (BuildKit repeats a failed step's last lines: counted once)."""
    errors = {line[line.index("error: ") :] for line in log.splitlines() if f"error: {prefix}" in line}
    assert len(errors) == 1, log[-3000:]
    return errors.pop()


RESTRICTED_PREFIX = "eurosat-restricted/"
COMMITTED_BASE = STANDIN_NGC  # what the committed locks were solved on (their "# base image:" line)


def make_on_restricted(*args: str, locked: str = "", check: bool = True, ngc_base: str = STANDIN_NGC_RESTRICTED):
    """make with another stand-in as NGC_BASE, images under their own names, LOCKED unset (uv sync's default)."""
    settings = [*make_settings(), f"NGC_BASE={ngc_base}", f"IMAGE_PREFIX={RESTRICTED_PREFIX}", f"LOCKED={locked}"]
    result = subprocess.run(["make", *args, *settings], cwd=REPO, capture_output=True, text=True, timeout=1800)
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def restricted_images():
    yield
    remove_tags(f"{RESTRICTED_PREFIX}*")


def derived_base(tag: str, script: str, base: str = STANDIN_NGC) -> str:
    """A stand-in variant: `base` changed by `script`, run as root with the index reachable, committed as `tag`."""
    ca = os.environ.get("PIP_CA")
    mount = ["-v", f"{ca}:/run/ca.crt:ro"] if ca else []  # (not -e: the committed image would keep the setting)
    script = ("export PIP_CERT=/run/ca.crt; " if ca else "") + script
    container_id = docker("run", "-d", "--user", "root", *mount, "--entrypoint", "sh", base, "-c", script).stdout.strip()
    assert docker("wait", container_id, timeout=600).stdout.strip() == "0", docker("logs", container_id).stderr
    docker("commit", "--change", "ENTRYPOINT []", "--change", 'CMD ["bash"]', container_id, tag)
    docker("rm", container_id)
    return tag


def pins(lock: str) -> dict[str, str]:
    return dict(re.findall(r"^([a-z0-9-]+)==(\S+) ", lock, re.M))


def restricted_id(layer: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", f"{RESTRICTED_PREFIX}{layer}:latest").stdout.strip()


def tracked_images() -> str:
    """What git says of images/ in the working tree: the builds must leave it as it is."""
    return subprocess.run(["git", "status", "--porcelain", "--", "images"], cwd=REPO, capture_output=True, text=True).stdout


def test_a_committed_lock_is_used_on_a_base_whose_other_packages_moved(built_images, restricted_images, tmp_path):
    """The next NGC release moves packages no layer pins (isort here, in its constraint file too): the fingerprints
    differ, each committed lock is proven on the new base (hashes, no base package moved, pip check, requirements.in)
    and built from; the tree stays clean, nothing is re-solved; LOCKED=1 accepts the same proof."""
    base = derived_base(f"{RESTRICTED_PREFIX}standin-ngc:moved", "PIP_CONSTRAINT= pip install --quiet --no-deps "
                        "isort==6.0.1 && sed -i 's/^isort==.*/isort==6.0.1/' /etc/pip/constraint.txt")  # fmt: skip
    assert freeze(base)["isort"] == "6.0.1" and base_fingerprint(base, "show") != base_fingerprint(STANDIN_NGC, "show")
    resolved = tmp_path / "resolved"
    tree = tracked_images()
    result = make_on_restricted("image-lightning", f"RESOLVED_LOCKS={resolved}", ngc_base=base)
    log = result.stdout + result.stderr
    print("\n".join(line for line in log.splitlines() if "holds" in line))
    for layer, built_on in (("torch-ngc", base), ("lightning", f"{RESTRICTED_PREFIX}torch-ngc:latest")):
        assert (
            f"images/{layer}/requirements.lock: solved on {COMMITTED_BASE}, built on {built_on} (its constraint file and "
            "installed packages differ), where it holds: every hash, no package of the base moved, pip check adds "
            "nothing, requirements.in met"
        ) in log, log[-3000:]
        installed = freeze(f"{RESTRICTED_PREFIX}{layer}:latest")
        committed = pins((REPO / "images" / layer / "requirements.lock").read_text())
        assert {name: installed.get(name) for name in committed} == committed  # the committed lock is what got installed
    assert "re-solv" not in log and tracked_images() == tree
    assert [path.name for path in resolved.iterdir()] == ["proofs.tsv"]  # no lock written anywhere
    built = restricted_id("torch-ngc")

    strict = make_on_restricted("image-torch-ngc", f"RESOLVED_LOCKS={resolved}", locked="1", ngc_base=base)
    assert "where it holds" in strict.stderr and "proving" not in strict.stderr  # the proof is remembered
    assert restricted_id("torch-ngc") == built and tracked_images() == tree


def test_a_base_package_that_conflicts_with_a_pin_is_re_solved_into_build(built_images, restricted_images, tmp_path):
    """The new base has imageio, which the torch-ngc lock pins, at another version, and its constraint file pins it:
    the committed lock cannot install there, so the layer is re-solved inside that base into RESOLVED_LOCKS (never
    over the tracked lock), with the command that adopts it, and built from it; a second build reuses the re-solve;
    LOCKED=1 refuses in one line before anything is built."""
    imageio = pins((REPO / "images" / "torch-ngc" / "requirements.lock").read_text())["imageio"]
    base = derived_base(f"{RESTRICTED_PREFIX}standin-ngc:conflict", "PIP_CONSTRAINT= pip install --quiet --no-deps "
                        "imageio==2.37.0 && echo imageio==2.37.0 >>/etc/pip/constraint.txt")  # fmt: skip
    resolved = tmp_path / "resolved"
    tree = tracked_images()
    result = make_on_restricted("image-torch-ngc", f"RESOLVED_LOCKS={resolved}", ngc_base=base)
    log = result.stdout + result.stderr
    name, fresh = "images/torch-ngc/requirements.lock", resolved / "torch-ngc" / "requirements.lock"
    print("\n".join(line for line in log.splitlines() if "solv" in line or "adopt it" in line))
    reason = re.search(rf"^{re.escape(name)} does not hold on {re.escape(base)} \((.+)\); re-solving it there into "
                       rf"{re.escape(str(fresh))}$", log, re.M)  # fmt: skip
    assert reason, log[-3000:]
    assert "does not install here: " in reason.group(1) and f"imageio=={imageio}" in reason.group(1)
    assert "imageio==2.37.0" in reason.group(1)
    assert f"adopt it: cp {fresh} {name} && git add {name} && git commit -m 'torch-ngc: lock re-solved for {base}'" in log
    solved = fresh.read_text()
    assert re.search(r"^# base: (.+)$", solved, re.M).group(1) == base_fingerprint(base, "show")
    assert "imageio" not in pins(solved)  # the base's own now
    installed = freeze(f"{RESTRICTED_PREFIX}torch-ngc:latest")
    assert installed["imageio"] == "2.37.0" and {n: installed.get(n) for n in pins(solved)} == pins(solved)
    assert json.loads(docker("image", "inspect", "--format", "{{json .Config.Labels}}",
                             f"{RESTRICTED_PREFIX}torch-ngc:latest").stdout)["io.github.eurosat.lock.torch-ngc.sha256"] == (
        hashlib.sha256(solved.encode()).hexdigest())  # fmt: skip
    assert tracked_images() == tree
    assert not (resolved / "proofs.tsv").exists()  # only a proof that held is remembered
    built = restricted_id("torch-ngc")

    again = make_on_restricted("image-torch-ngc", f"RESOLVED_LOCKS={resolved}", ngc_base=base)
    assert f"building from {fresh}, re-solved for it earlier" in again.stderr and "re-solving" not in again.stderr
    assert restricted_id("torch-ngc") == built and fresh.read_text() == solved

    refused = make_on_restricted("image-torch-ngc", f"RESOLVED_LOCKS={resolved}", locked="1", ngc_base=base, check=False)
    assert refused.returncode != 0
    error = one_error(refused.stdout + refused.stderr, f"{name} does not hold on {base}")
    assert "LOCKED=1 builds only from committed locks" in error and "building " not in refused.stdout
    assert restricted_id("torch-ngc") == built and tracked_images() == tree

    # A layer on that parent: its committed lock may well hold there, but the parent is not the committed tree's
    on_top = make_on_restricted("image-lightning", f"RESOLVED_LOCKS={resolved}", locked="1", ngc_base=base, check=False)
    assert on_top.returncode != 0
    error = one_error(on_top.stdout + on_top.stderr, f"{RESTRICTED_PREFIX}torch-ngc:latest was built from another")
    assert "images/torch-ngc/requirements.lock than the committed one (a re-solve): LOCKED=1 builds only on" in error
    assert "building " not in on_top.stdout


# A distribution of the base that owns smmap's files under another name, as NGC's pytorch-triton owns triton's
FAKE_OWNER = (
    "site=$(python3 -c \"import sysconfig; print(sysconfig.get_path('purelib'))\") && info=$site/ngc_smmap-1.0.dist-info && "
    'mkdir -p "$info" "$site/smmap" && echo "# the base\'s own build" >"$site/smmap/__init__.py" && '
    'printf \'Metadata-Version: 2.1\\nName: ngc-smmap\\nVersion: 1.0\\n\' >"$info/METADATA" && echo pip >"$info/INSTALLER" && '
    "printf 'smmap/__init__.py,,\\nngc_smmap-1.0.dist-info/METADATA,,\\nngc_smmap-1.0.dist-info/RECORD,,\\n' "
    '>"$info/RECORD" && '
    "echo ngc-smmap==1.0 >>/etc/pip/constraint.txt"
)


def test_a_layer_package_that_overwrites_files_of_a_base_package_does_not_hold(built_images, restricted_images, tmp_path):
    """PyPI's triton over NGC's pytorch-triton: two names, the base's version unchanged in pip's eyes, its files
    replaced. The torch-ngc lock's smmap over a base package that owns smmap's files: the proof fails, naming both,
    and LOCKED=1 refuses in one line; the failed proof is not remembered."""
    base = derived_base(f"{RESTRICTED_PREFIX}standin-ngc:owner", FAKE_OWNER)
    assert "ngc-smmap==1.0" in sh(base, "pip freeze").stdout
    resolved = tmp_path / "resolved"
    refused = make_on_restricted("image-torch-ngc", f"RESOLVED_LOCKS={resolved}", locked="1", ngc_base=base, check=False)
    assert refused.returncode != 0
    error = one_error(refused.stdout + refused.stderr, f"images/torch-ngc/requirements.lock does not hold on {base}")
    assert "this layer overwrote files of its base: smmap overwrites 1 file(s) of ngc-smmap (e.g. " in error
    assert "smmap/__init__.py)" in error and "LOCKED=1 builds only from committed locks" in error
    assert not (resolved / "proofs.tsv").exists()


def test_a_base_whose_own_packages_fail_pip_check_still_builds(built_images, restricted_images, tmp_path):
    """NVIDIA's builds may declare requirements that pip check flags (PyPI's jupyterlab-tensorboard-pro 4.0.0, a
    version 25.10 ships as its own build, requires tornado<=6.2 against NGC's 6.5.2): a layer fails only for
    problems it adds, and says which ones the base already had."""
    broken = derived_base(f"{RESTRICTED_PREFIX}standin-ngc:broken-pip-check",
                          "pip install --quiet --no-deps jupyterlab-tensorboard-pro==4.0.0")  # fmt: skip
    problem = "jupyterlab-tensorboard-pro 4.0.0 has requirement tornado<=6.2, but you have tornado 6.5.2."
    assert problem in sh(broken, "pip check", check=False).stdout
    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images)
    result = make_on_restricted("image-torch-ngc", f"IMAGES_DIR={images}", f"RESOLVED_LOCKS={tmp_path}", ngc_base=broken)
    assert f"pip check: only the base's own problems, unchanged: {problem}" in result.stdout + result.stderr
    assert "where it holds" in result.stderr  # the committed lock, proven on that base


def test_a_layer_that_breaks_pip_check_fails_its_build(built_images, tmp_path):
    """The other side: a problem the layer itself brings stops the build, and the previous image stays."""
    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images)
    lock = images / "jupyter" / "requirements.lock"  # PyPI's wheel, installed --no-deps as a lock does
    digest = "aa283ee14aaed8c4b9780c178f9b5cbeeb88f2d72160b9db900d2b83ccf815d9"
    wheel = f"jupyterlab-tensorboard-pro==4.0.0 \\\n    --hash=sha256:{digest}\n"
    lock.write_text(lock.read_text() + wheel)
    before = image_id("jupyter")
    result = make("image-jupyter", f"IMAGES_DIR={images}", "LOCKED=1", check=False)
    assert result.returncode != 0
    error = one_error(result.stdout + result.stderr, "images/jupyter/requirements.lock breaks pip check")
    assert "jupyterlab-tensorboard-pro 4.0.0 has requirement tornado<=6.2" in error
    assert image_id("jupyter") == before


def test_a_re_solve_that_conflicts_with_the_base_is_one_line_and_builds_nothing(built_images, restricted_images, tmp_path):
    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images)
    source = images / "torch-ngc" / "requirements.in"
    source.write_text(source.read_text() + "numpy==2.0.2\n")  # the base has numpy 1.26.4
    lock = (images / "torch-ngc" / "requirements.lock").read_text()
    before = docker("images", "--quiet", f"{RESTRICTED_PREFIX}torch-ngc:latest").stdout
    result = make_on_restricted("image-torch-ngc", f"IMAGES_DIR={images}", f"RESOLVED_LOCKS={tmp_path}", check=False)
    assert result.returncode != 0
    assert "(images/torch-ngc/requirements.in is not met here: numpy==2.0.2 (1.26.4))" in result.stderr  # why it re-solves
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: images/torch-ngc/requirements.in: cannot be solved on this base: "
        "The user requested numpy==2.0.2; The user requested (constraint) numpy==1.26.4"
    ], result.stdout[-2000:] + result.stderr[-2000:]
    assert "building " not in result.stdout
    assert (images / "torch-ngc" / "requirements.lock").read_text() == lock  # nothing written
    assert not (tmp_path / "torch-ngc").exists()
    assert docker("images", "--quiet", f"{RESTRICTED_PREFIX}torch-ngc:latest").stdout == before  # nothing built


def test_pip_cannot_replace_a_package_of_the_base(built_images):
    """PIP_CONSTRAINT is in force in the built image, as on NGC: asking for another numpy is refused."""
    result = sh("eurosat/lightning:latest", "pip install --dry-run numpy==2.0.2", "--user", "root", *pip_network(), check=False)
    assert result.returncode != 0
    assert "ResolutionImpossible" in result.stderr
    assert "The user requested (constraint) numpy==1.26.4" in result.stdout


def test_uv_cannot_replace_the_base_torch_either(built_images, base_packages):
    """The image sets UV_CONSTRAINT to NGC's constraint file: `uv pip install --upgrade torch` keeps NVIDIA's torch
    (or refuses), while the same command without it would install PyPI's torch over it."""
    script = (
        "pip install --quiet uv && "
        "(env -u UV_CONSTRAINT uv pip install --system --upgrade --dry-run torch 2>&1 | grep -E '^ [-+] torch==' || true) && "
        "echo ---; uv pip install --system --upgrade torch; echo rc=$?; "
        "python3 -c 'import torch; print(torch.__version__)'"
    )
    result = sh("eurosat/torch-ngc:latest", script, "--user", "root", *pip_network())
    unguarded, guarded = result.stdout.split("---\n")
    assert f"- torch=={base_packages['torch']}" in unguarded and "+ torch==" in unguarded  # the threat is real
    assert guarded.splitlines()[-1] == base_packages["torch"]  # and the guard holds


def test_make_lock_images_solves_each_layer_inside_the_base_the_same_way_twice(built_images, base_packages, tmp_path):
    """A solve is checked against its inputs and against a second solve in the same run, never against the committed
    locks: the index can change its past (a yank, a file listed with another upload time), so what a re-solve today
    changes against them is make lock-drift's report. Here lock-drift re-solves a tampered copy of the first solve:
    it reports exactly the tampering, keeps its solves (DRIFT_OUT) equal to the first ones byte for byte, exits 0."""
    committed = {layer: (REPO / "images" / layer / "requirements.lock").read_text() for layer in NGC_LAYERS}
    first = tmp_path / "first"
    shutil.copytree(REPO / "images", first)
    for layer in NGC_LAYERS:
        (first / layer / "requirements.lock").unlink()
    make("lock-images", f"LOCK_LAYERS={' '.join(NGC_LAYERS)}", f"IMAGES_DIR={first}", timeout=900)
    lock_py = [sys.executable, REPO / "scripts" / "lock.py"]
    checked = subprocess.run([*lock_py, "check-images", first], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr  # the fresh locks carry every line make lock-check reads
    for layer in NGC_LAYERS:
        lock = (first / layer / "requirements.lock").read_text()
        pinned = re.findall(r"^([a-z0-9-]+)==", lock, re.M)
        assert not set(pinned) & set(base_packages)  # only what the base lacks
        for name in re.findall(r"^([a-z0-9-]+)", (REPO / "images" / layer / "requirements.in").read_text(), re.M):
            assert name in pinned or name in base_packages or name in freeze(PARENT[layer]), name

    old = tmp_path / "old"  # the first solve as an older lock: one pin at another version, one the index dropped
    shutil.copytree(first, old)
    lock = old / "torch-ngc" / "requirements.lock"
    solved = lock.read_text()
    imageio = re.search(r"^imageio==(\S+) ", solved, re.M).group(1)
    gone = "eurosat-gone==1.0 \\\n    --hash=sha256:" + "0" * 64 + "\n    # via -r requirements.in\n"
    lock.write_text(solved.replace(f"imageio=={imageio} ", "imageio==0.0.1 ") + gone)
    subprocess.run([*lock_py, "seal", lock], check=True)
    again = tmp_path / "again"
    result = make("lock-drift", f"LOCK_LAYERS={' '.join(NGC_LAYERS)}", f"IMAGES_DIR={old}", f"DRIFT_OUT={again}", timeout=900)
    for layer in NGC_LAYERS:
        assert (again / "images" / layer / "requirements.lock").read_bytes() == (first / layer / "requirements.lock").read_bytes()
    report = result.stdout.splitlines()
    at = report.index("images/torch-ngc/requirements.lock: 2 difference(s) from a re-solve today")
    assert report[at + 1] == "  removed eurosat-gone 1.0"
    assert re.fullmatch(rf"  changed imageio 0\.0\.1 -> {re.escape(imageio)} \((uploaded \S+Z|upload time .+)\)", report[at + 2])
    for layer in NGC_LAYERS[1:]:
        assert any(re.fullmatch(rf"images/{layer}/requirements\.lock: no drift \(\d+ pins\)", line) for line in report), layer
    assert any(line.startswith("requirements.lock: ") for line in report)  # the root lock is re-solved too
    assert {layer: (REPO / "images" / layer / "requirements.lock").read_text() for layer in NGC_LAYERS} == committed
    assert docker("ps", "--quiet", "--filter", f"ancestor={STANDIN_NGC}").stdout.strip() == ""  # the container is gone
