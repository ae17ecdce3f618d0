"""Lock integrity: a hand-edited or corrupted hash stops `make venv` before anything is installed, and
`make lock-check` names the damaged lock (the image build's own check is in tests/images/test_compose.py)."""

import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime

from helpers import REPO, run

FILES = ("Makefile", "requirements.in", "requirements.lock", "pyproject.toml", "scripts/lock.py", "images/versions.env")
FILES += ("images/hierarchy.env", "src/eurosat/__init__.py", "src/eurosat/errors.py", "src/eurosat/manifest.py")


def tamper_hashes(text: str, package: str = r"[A-Za-z0-9_.\-]+") -> tuple[str, str]:
    """The lock with every hash of one package (the first one by default) changed, and that package's name."""
    block = re.search(rf"^({package})==.*?(?=^[A-Za-z0-9])", text, re.M | re.S)
    changed = re.sub(r"sha256:([0-9a-f]{64})", lambda m: "sha256:" + m[1][::-1], block[0])
    return text.replace(block[0], changed), block[1]


def test_a_tampered_lock_stops_make_venv_before_anything_is_installed(tmp_path):
    for name in FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, tmp_path / name)
    lock = tmp_path / "requirements.lock"
    lock.write_text(tamper_hashes(lock.read_text())[0])
    result = subprocess.run(["make", "venv"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "error: requirements.lock was changed after it was generated" in result.stderr
    assert not (tmp_path / ".venv").exists()  # stopped before creating anything


def test_make_lock_check_names_a_tampered_image_lock(tmp_path):
    assert run("make", "lock-check").returncode == 0
    images = tmp_path / "images"  # a copy: tests never edit the working tree
    shutil.copytree(REPO / "images", images)
    lock = images / "lightning" / "requirements.lock"
    lock.write_text(tamper_hashes(lock.read_text())[0])
    result = run("make", "lock-check", f"IMAGES_DIR={images}", check=False)
    assert result.returncode != 0
    assert f"error: {lock} was changed after it was generated" in result.stderr


def test_lock_images_names_an_unknown_layer_in_one_line():
    result = run(sys.executable, "scripts/lock_images.py", "--ngc-base", "any", "torch-ngc", "nope", check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: no images/<layer>/requirements.in for nope: LOCK_LAYERS takes cuda-base jupyter lightning torch-ngc"
    ]


def copy_lock_tools(root):
    for name in FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "images", root / "images", dirs_exist_ok=True)


def test_every_lock_records_the_cutoff_of_images_versions_env():
    cutoff = re.search(r"^LOCK_CUTOFF=(\S+)$", (REPO / "images" / "versions.env").read_text(), re.M).group(1)
    locks = [REPO / "requirements.lock", *sorted((REPO / "images").glob("*/requirements.lock"))]
    assert len(locks) == 5
    for lock in locks:
        assert f"\n# uploaded prior to: {cutoff}\n" in lock.read_text(), lock


def test_make_relock_moves_the_cutoff_and_lock_check_names_every_lock_it_leaves_behind(tmp_path):
    copy_lock_tools(tmp_path)
    before = datetime.now(UTC).replace(microsecond=0)
    result = run(sys.executable, str(tmp_path / "scripts" / "lock.py"), "relock")
    cutoff = re.search(r"^LOCK_CUTOFF=(\S+)$", (tmp_path / "images" / "versions.env").read_text(), re.M).group(1)
    assert result.stdout == f"LOCK_CUTOFF={cutoff} in images/versions.env\n"
    assert before <= datetime.strptime(cutoff, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC) <= datetime.now(UTC)
    old = re.search(r"^LOCK_CUTOFF=(\S+)$", (REPO / "images" / "versions.env").read_text(), re.M).group(1)
    lock_py = tmp_path / "scripts" / "lock.py"
    result = run(sys.executable, lock_py, "check", tmp_path / "requirements.in", tmp_path / "requirements.lock", check=False)
    assert result.returncode == 1
    assert result.stderr == (
        f"error: {tmp_path / 'requirements.lock'} was solved with uploads prior to {old}, "
        f"images/versions.env has LOCK_CUTOFF={cutoff}: run `make lock`\n"
    )
    locks = sorted((tmp_path / "images").glob("*/requirements.lock"))
    result = run(sys.executable, lock_py, "cutoff", *locks, check=False)
    assert result.returncode == 1
    assert [line.split(" was solved")[0] for line in result.stderr.splitlines()] == [f"error: {lock}" for lock in locks]


def check_images(images) -> subprocess.CompletedProcess:
    return run(sys.executable, REPO / "scripts" / "lock.py", "check-images", images, check=False)


def test_lock_check_holds_every_image_lock_to_its_requirements_in_offline(tmp_path):
    """What CI checks of an image lock depends on its inputs alone, never on what the index serves today."""
    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images)
    assert check_images(images).stdout == f"every lock in {images} satisfies its requirements.in\n"

    source = images / "lightning" / "requirements.in"
    source.write_text(source.read_text() + "pyfiglet\n")  # an input edited after the solve
    (images / "jupyter" / "requirements.in").write_text("jupyterlab>=4.5\nnbclient\nipykernel\n")  # the base has 4.4.9
    result = check_images(images)
    assert result.returncode == 1
    lightning, jupyter = images / "lightning", images / "jupyter"
    assert result.stderr.splitlines() == [
        f"error: {jupyter / 'requirements.in'} changed since {jupyter / 'requirements.lock'} was solved: run `make lock-images`",
        f"error: the base has (as {jupyter / 'requirements.lock'} records) jupyterlab==4.4.9, "
        f"{jupyter / 'requirements.in'} asks for jupyterlab>=4.5: run `make lock-images`",
        f"error: {source} changed since {lightning / 'requirements.lock'} was solved: run `make lock-images`",
        f"error: pyfiglet is in {source} but not pinned in {lightning / 'requirements.lock'} nor met by the base: "
        "run `make lock-images`",
    ]


def reseal(lock, text: str) -> None:
    lock.write_text(text)
    run(sys.executable, REPO / "scripts" / "lock.py", "seal", lock)


def test_lock_check_names_an_image_lock_without_its_pins_hashes_or_base(tmp_path):
    images = tmp_path / "images"
    shutil.copytree(REPO / "images", images)
    lock = images / "torch-ngc" / "requirements.lock"
    text = lock.read_text()
    text = re.sub(r"^timm==\S+ \\\n    --hash=sha256:[0-9a-f]{64}\n    # via .*\n", "", text, flags=re.M)  # timm's pin gone
    text = re.sub(r"^(tifffile==\S+) \\\n    --hash=sha256:[0-9a-f]{64}\n", r"\1\n", text, flags=re.M)  # an unhashed pin
    reseal(lock, re.sub(r"^# base: .*\n", "", text, flags=re.M))
    result = check_images(images)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        f"error: {lock} records no '# base:' fingerprint of the base it was solved in: run `make lock-images`",
        f"error: timm is in {lock.with_suffix('.in')} but not pinned in {lock} nor met by the base: run `make lock-images`",
        f"error: tifffile has no hash in {lock}: run `make lock-images`",
    ]


def test_lock_drift_names_an_unknown_layer_in_one_line():
    result = run(sys.executable, "scripts/lock_drift.py", "--ngc-base", "any", "nope", check=False)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == [f"error: no {REPO / 'images'}/<layer>/requirements.in for nope"]


def renovate_patterns(manager: dict) -> list[re.Pattern]:
    return [re.compile(pattern.strip("/")) for pattern in manager["managerFilePatterns"]]


def test_renovate_finds_every_pin_the_locks_are_made_from():
    """renovate.json covers the root bases' digests, every requirements.in (the venv's and each layer's) and the torch
    version of images/versions.env, and Renovate's own schema (vendored by check-jsonschema: offline) accepts it."""
    config = json.loads((REPO / "renovate.json").read_text())
    tracked = run("git", "ls-files", "-co", "--exclude-standard").stdout.split()
    docker_files = [name for name in tracked if any(p.search(name) for p in renovate_patterns(config["dockerfile"]))]
    root_bases = [name for name in tracked if name.endswith("Dockerfile") and " AS root-base" in (REPO / name).read_text()]
    assert root_bases and set(root_bases) <= set(docker_files)
    inputs = [name for name in tracked if any(p.search(name) for p in renovate_patterns(config["pip_requirements"]))]
    assert sorted(inputs) == sorted(name for name in tracked if name.endswith("requirements.in"))
    versions = [manager for manager in config["customManagers"]
                if any(p.search("images/versions.env") for p in renovate_patterns(manager))]  # fmt: skip
    text = (REPO / "images" / "versions.env").read_text()
    assert sorted(manager["depNameTemplate"] for manager in versions) == ["torch", "torchvision"]
    assert all(re.search(manager["matchStrings"][0].replace("(?<", "(?P<"), text) for manager in versions)  # JS groups
    validate = [REPO / ".venv" / "bin" / "check-jsonschema", "--builtin-schema", "vendor.renovate"]
    assert subprocess.run([*validate, REPO / "renovate.json"], capture_output=True).returncode == 0


def test_a_broken_renovate_config_fails_its_schema_check(tmp_path):
    config = json.loads((REPO / "renovate.json").read_text())
    config["enabledManagers"] = "dockerfile"  # not a list
    broken = tmp_path / "renovate.json"
    broken.write_text(json.dumps(config))
    validate = [REPO / ".venv" / "bin" / "check-jsonschema", "--builtin-schema", "vendor.renovate", broken]
    result = subprocess.run(validate, capture_output=True, text=True)
    assert result.returncode != 0 and "$.enabledManagers: 'dockerfile' is not of type 'array'" in result.stdout
