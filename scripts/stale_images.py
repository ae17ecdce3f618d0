"""Which of an image's layers are stale: built from other inputs than the tree's, or on another parent.

    python scripts/stale_images.py labels LAYER BASE               the build's labels that record LAYER's inputs
    python scripts/stale_images.py stale IMAGE [--refuse] [--built-only]  IMAGE's stale layers, in build order

Each layer's build records what it was built from as labels: the sha256 of its inputs (the files of images/<layer>/,
its Dockerfile and lock among them, and of images/common/, which the builds copy in) and the identity of the image it
was built on (the parent's image id, or a root base's reference when the engine holds no image of it). `stale`
compares them with the tree and the engine: a stale layer and every layer built on it is printed, one a line, for
make to rebuild in order; each reason goes to stderr in one line. With --refuse (make's NO_BUILD=1) a stale image is
an error instead, naming what changed (and, with --refusal, why it is not rebuilt); with --built-only an image not
built at all is nobody's business (make doctor reports it). Options: --images DIR (the build context, make's IMAGES_DIR), --prefix
(IMAGE_PREFIX), --root NAME=REF (CUDA_BASE, NGC_BASE). The host side needs docker and the standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from eurosat.manifest import image_hierarchy  # noqa: E402

DOCKER = os.environ.get("DOCKER", "docker")
INPUTS = "io.github.eurosat.inputs.sha256"
PARENT = "io.github.eurosat.parent"


def inputs_hash(images: Path, layer: str) -> str:
    """The sha256 of every file a layer's build reads from the context: its folder and the shared scripts."""
    digest = hashlib.sha256()
    for folder in (images / layer, images / "common"):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                digest.update(f"{path.relative_to(images)}\0".encode() + hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def inspect(reference: str) -> dict | None:
    result = subprocess.run([DOCKER, "image", "inspect", reference], capture_output=True, text=True)
    return json.loads(result.stdout)[0] if result.returncode == 0 else None


def identity(reference: str) -> str:
    """The image a build starts from: its id when the engine has it, else the reference (a root base BuildKit pulls
    into its own store is never in the engine's image list; its digest pin names it)."""
    found = inspect(reference)
    return found["Id"] if found else reference


def stale_layers(image: str, images: Path, prefix: str, roots: dict[str, str]) -> list[tuple[str, str]]:
    """(layer, why) for each stale layer of IMAGE's lineage, in build order; a stale layer makes its children stale."""
    hierarchy = image_hierarchy()
    stale: list[tuple[str, str]] = []
    for layer in reversed(hierarchy.lineage(image)):
        parent = hierarchy.parents[layer]
        reference = f"{prefix}{parent}:latest" if parent in hierarchy.parents else roots[parent]
        name = f"{prefix}{layer}:latest"
        built = inspect(name)
        labels = ((built or {}).get("Config") or {}).get("Labels") or {}
        if stale:
            why = f"its parent {reference} is rebuilt first"
        elif not built:
            why = "not built yet"
        elif labels.get(INPUTS) != inputs_hash(images, layer):
            why = f"{images.name}/{layer}/ or {images.name}/common/ changed since it was built (its Dockerfile, lock or scripts)"
        elif labels.get(PARENT) != identity(reference):
            why = f"built on another {reference} than the one there now"
        else:
            continue
        stale.append((layer, why))
    return stale


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=("labels", "stale"))
    parser.add_argument("image", help="a layer of images/hierarchy.env")
    parser.add_argument("base", nargs="?", help="labels: the image the layer is built on")
    parser.add_argument("--images", type=Path, default=Path("images"), help="the build context (IMAGES_DIR)")
    parser.add_argument("--prefix", default="eurosat/", help="IMAGE_PREFIX")
    parser.add_argument("--root", action="append", default=[], metavar="NAME=REF", help="a root base: CUDA_BASE=...")
    parser.add_argument("--refuse", action="store_true", help="stale: exit 2 instead of listing what to rebuild")
    parser.add_argument("--built-only", action="store_true", help="stale: nothing when IMAGE is not built at all")
    parser.add_argument("--refusal", default="NO_BUILD is set", help="--refuse: why a stale image is not rebuilt")
    args = parser.parse_args()
    if args.command == "labels":
        print(f"--label {INPUTS}={inputs_hash(args.images, args.image)} --label {PARENT}={identity(args.base)}")
        return 0
    roots = dict(root.split("=", 1) for root in args.root)
    if args.built_only and not inspect(f"{args.prefix}{args.image}:latest"):
        return 0
    stale = stale_layers(args.image, args.images, args.prefix, roots)
    if stale and args.refuse:
        layer, why = stale[0]
        rebuild = " ".join(f"image-{name}" for name, _ in stale)
        print(f"error: {args.prefix}{layer}:latest is stale: {why}; {args.refusal}: run 'make {rebuild}'", file=sys.stderr)
        return 2
    for layer, why in stale:
        print(f"rebuilding {args.prefix}{layer}:latest: {why}", file=sys.stderr)
        print(layer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
