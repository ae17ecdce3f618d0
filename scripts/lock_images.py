"""Solve each image layer's hashed lock against the base it is built on (make lock-images).

    python scripts/lock_images.py --ngc-base IMAGE [--out DIR] LAYER...      (layers in build order)

A layer on the CUDA root (images/hierarchy.env) is a virtual environment over a base without Python packages: a
universal lock (uv, every platform, Python >= LOCK_PYTHON of versions.env). A layer on the NGC root is solved
inside one throwaway container of the NGC base, in build order:
pip itself resolves the layer's requirements.in with the base's PIP_CONSTRAINT in force and every installed
distribution as a constraint (the base's own versions, pre-releases like NGC's torch included), for the base's
Python and platform. The lock holds only what the base lacks, one hashed file per package, and records the
base's fingerprint (images/common/base-fingerprint.py) for the build to check. The lock is then installed in
that container exactly as the image build does (images/common/install-layer.sh), so the next layer is solved
against it; a layer's lock in --out is replaced only after that install passed. Needs docker.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from lock import VERSIONS, seal, versions_problems
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from eurosat.manifest import image_hierarchy

REPO = Path(__file__).resolve().parents[1]
DOCKER = os.environ.get("DOCKER", "docker")
WORK = "/lock"  # where the container sees the scratch folder


def docker(*args: str) -> str:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: {DOCKER} {' '.join(args[:3])}... failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}")
    return result.stdout.strip()


def lock_cuda_layer(layer: str, out: Path) -> None:
    """On the plain-CUDA root: torch and torchvision in a venv, so a universal lock fits any Python of the base."""
    lock = out / layer / "requirements.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    uv = Path(sys.executable).with_name("uv")
    source = REPO / "images" / layer / "requirements.in"
    for line in filter(None, (line.split("#")[0].strip() for line in source.read_text().splitlines())):
        for problem in versions_problems(source, Requirement(line)):
            sys.exit(f"error: {problem}")
    python = VERSIONS["LOCK_PYTHON"]
    command = [str(uv), "pip", "compile", str(source), "--universal", "--python-version", python, "--generate-hashes"]
    command += ["--quiet", "--custom-compile-command", "make lock-images", "-o", str(lock)]
    subprocess.run(command, check=True)
    seal(lock)
    print(f"locked {lock} (universal)")


def via(items: list[dict], environment: dict) -> tuple[dict[str, list[str]], list[str]]:
    """For each package pip would install, the packages installed with it that require it. A package pulled in
    only through an extra of a base package's requirement (pytorch-lightning's fsspec[http]) gets that extra."""
    names = {canonicalize_name(item["metadata"]["name"]) for item in items}
    parents: dict[str, list[str]] = {name: [] for name in names}
    extras = []
    for item in items:
        parent = canonicalize_name(item["metadata"]["name"])
        for line in item["metadata"].get("requires_dist", []):
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""}):
                continue
            wanted = canonicalize_name(requirement.name)
            if wanted in names:
                parents[wanted].append(parent)
            elif requirement.extras:
                extras.append(f"{parent} ({requirement.name}[{','.join(sorted(requirement.extras))}])")
    return parents, extras


def lock_text(layer: str, report: dict, fingerprint: str, base: str) -> str:
    items = sorted(report["install"], key=lambda item: canonicalize_name(item["metadata"]["name"]))
    parents, extras = via(items, report["environment"])
    lines = [
        f"# base: {fingerprint}",
        f"# base image: {base}",
        f"# Solved by `make lock-images` from images/{layer}/requirements.in inside that base, with its constraint file",
        "# and installed versions in force: only what the base lacks, one file per package for its Python and platform.",
    ]
    for item in items:
        name, version = canonicalize_name(item["metadata"]["name"]), item["metadata"]["version"]
        archive = item["download_info"].get("archive_info", {})
        digest = archive.get("hashes", {}).get("sha256") or archive.get("hash", "").partition("sha256=")[2]
        if not digest:
            sys.exit(f"error: pip reported no sha256 for {name} {version} ({item['download_info'].get('url')})")
        sources = (["-r requirements.in"] if item.get("requested") else []) + sorted(parents[name])
        sources = sources or [f"an extra: {', '.join(extras)}"]
        lines += [f"{name}=={version} \\", f"    --hash=sha256:{digest}", f"    # via {', '.join(sources)}"]
    return "\n".join(lines) + "\n"


class BaseContainer:
    """One throwaway container of the NGC base that the layers are solved and installed into, in order, with the
    image build's own scripts (images/common) on its PATH."""

    def __init__(self, image: str, scratch: Path):
        mounts = ["-v", f"{scratch}:{WORK}"]
        if os.environ.get("PIP_CA"):  # a TLS-intercepting network: pip needs its CA bundle
            mounts += ["-v", f"{os.environ['PIP_CA']}:/run/secrets/pip-ca:ro", "-e", "PIP_CERT=/run/secrets/pip-ca"]
        self.id = docker("run", "-d", "--rm", "--user", "root", "--entrypoint", "sleep", *mounts, image, "infinity")
        for script, name in (("base-fingerprint.py", "base-fingerprint"), ("install-layer.sh", "install-layer")):
            docker("cp", str(REPO / "images" / "common" / script), f"{self.id}:/usr/local/bin/{name}")

    def run(self, *command: str) -> str:
        return docker("exec", self.id, *command)

    def close(self) -> None:
        subprocess.run([DOCKER, "exec", self.id, "chmod", "-R", "a+rwX", WORK], capture_output=True)  # root wrote there
        subprocess.run([DOCKER, "rm", "-f", self.id], capture_output=True)


def lock_ngc_layers(layers: list[str], ngc_base: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        os.chmod(scratch, 0o777)
        container = BaseContainer(ngc_base, scratch)
        base = f"{ngc_base} ({docker('image', 'inspect', '--format', '{{.Id}}', ngc_base)})"
        try:
            for layer in layers:
                (scratch / f"{layer}.in").write_bytes((REPO / "images" / layer / "requirements.in").read_bytes())
                fingerprint = container.run("base-fingerprint", "show")
                container.run("sh", "-c", f"base-fingerprint freeze >{WORK}/installed.txt")
                container.run(
                    "python3", "-m", "pip", "install", "--dry-run", "--quiet", "--only-binary=:all:",
                    "--report", f"{WORK}/{layer}.json", "-r", f"{WORK}/{layer}.in", "-c", f"{WORK}/installed.txt",
                )  # fmt: skip
                report = json.loads((scratch / f"{layer}.json").read_text())
                candidate = scratch / f"{layer}.lock"
                candidate.write_text(lock_text(layer, report, fingerprint, base))
                seal(candidate)
                # installed as the build installs it; the committed lock is replaced only once that worked
                container.run("install-layer", f"{WORK}/{layer}.lock", f"images/{layer}/requirements.lock", ngc_base)
                lock = out / layer / "requirements.lock"
                lock.parent.mkdir(parents=True, exist_ok=True)
                lock.write_bytes(candidate.read_bytes())
                print(f"locked {lock}: {len(report['install'])} packages the base lacks")
                base = f"{ngc_base} + images/{layer}/requirements.lock"
        finally:
            container.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layers", nargs="+", help="image names in build order")
    parser.add_argument("--ngc-base", required=True, help="the NGC image (or its stand-in) the layers are built on")
    parser.add_argument("--out", type=Path, default=REPO / "images", help="where <layer>/requirements.lock go")
    args = parser.parse_args()
    unknown = [layer for layer in args.layers if not (REPO / "images" / layer / "requirements.in").is_file()]
    if unknown:
        known = sorted(path.parent.name for path in (REPO / "images").glob("*/requirements.in"))
        sys.exit(f"error: no images/<layer>/requirements.in for {' '.join(unknown)}: LOCK_LAYERS takes {' '.join(known)}")
    hierarchy = image_hierarchy()
    for layer in args.layers:
        if hierarchy.root(layer) == "CUDA_BASE":
            lock_cuda_layer(layer, args.out)
    lock_ngc_layers([layer for layer in args.layers if hierarchy.root(layer) == "NGC_BASE"], args.ngc_base, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
