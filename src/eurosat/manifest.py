"""Project manifests (projects/<name>/project.toml) and the image hierarchy (images/hierarchy.env).

The standard library only: the Makefile runs this file as a script before any virtual environment exists.

    python3 src/eurosat/manifest.py projects                 # every project, in order
    python3 src/eurosat/manifest.py default                  # the project make uses without PROJECT=
    python3 src/eurosat/manifest.py check NAME               # one line naming what is wrong, exit 2
    python3 src/eurosat/manifest.py image NAME               # the image NAME trains in
    python3 src/eurosat/manifest.py launch NAME GPUS [PYTHON] # the command that starts GPUS processes on one node
    python3 src/eurosat/manifest.py layout NAME NODES GPUS   # the flags train.py needs under torchrun
"""

from __future__ import annotations

import re
import shlex
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a script by make: the package is not installed yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eurosat.errors import UserError  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
PROJECTS_DIR = REPO_ROOT / "projects"
HIERARCHY = REPO_ROOT / "images" / "hierarchy.env"
PROJECT_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")
LAUNCHERS = {
    "torchrun": "torchrun starts one process per device",
    "self": "train.py starts its processes itself from its layout flags (Lightning, Accelerate, ...)",
}
MANIFEST_KEYS = {"description": str, "image": str, "default": bool, "launch": dict}
LAUNCH_KEYS = {"launcher": str, "layout_flags": list}


class ManifestError(UserError):
    """A missing, unknown or incomplete manifest, or a bad image hierarchy."""


def read_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as make's `include` reads them (comments and blank lines skipped)."""
    pairs = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            pairs[key.strip()] = value.strip()
    return pairs


@dataclass(frozen=True)
class ImageHierarchy:
    """images/hierarchy.env: the images in build order; each one's parent is an image before it or a root base
    (the make variable, CUDA_BASE or NGC_BASE, whose default is in images/versions.env)."""

    order: tuple[str, ...]
    parents: dict[str, str]

    def root(self, image: str) -> str:
        """The root base an image is built on, through its parents."""
        while image in self.parents:
            image = self.parents[image]
        return image

    def lineage(self, image: str) -> list[str]:
        """image, its parent, ... up to the first image built on a root base."""
        chain = [image]
        while self.parents[chain[-1]] in self.parents:
            chain.append(self.parents[chain[-1]])
        return chain

    def children(self, image: str) -> list[str]:
        """image and every image built on it, in build order."""
        return [name for name in self.order if image in self.lineage(name)]


def image_hierarchy(path: Path = HIERARCHY) -> ImageHierarchy:
    env = read_env(path)
    order = tuple(env["IMAGES"].split())
    parents = {name: env[f"PARENT_{name}"] for name in order}
    for position, name in enumerate(order):
        parent = parents[name]
        if parent in parents and parent not in order[:position]:
            raise ManifestError(f"{path}: {name}'s parent {parent} must come before it in IMAGES")
    return ImageHierarchy(order, parents)


@dataclass(frozen=True)
class Project:
    name: str
    description: str
    image: str
    launcher: str
    layout_flags: tuple[str, ...]
    default: bool = False

    @property
    def folder(self) -> Path:
        return PROJECTS_DIR / self.name

    @property
    def train_script(self) -> Path:
        return self.folder / "train.py"

    def layout(self, nodes: int, gpus: int) -> list[str]:
        """The flags that tell train.py how many nodes and devices per node it runs on (none for torchrun's)."""
        return [flag.format(nodes=nodes, gpus=gpus) for flag in self.layout_flags]

    def launch(self, gpus: int, python: str = "python3") -> list[str]:
        """The command that trains on `gpus` processes on this machine (train.py's flags follow it)."""
        script = str(self.train_script.relative_to(REPO_ROOT))
        if gpus <= 1:
            return [python, script, "train"]
        if self.launcher == "torchrun":
            return [python, "-m", "eurosat.torchrun", "--standalone", f"--nproc_per_node={gpus}", script, "train"]
        return [python, script, "train", *self.layout(1, gpus)]


def project_names() -> list[str]:
    return sorted(path.parent.name for path in PROJECTS_DIR.glob("*/project.toml"))


def load(name: str) -> Project:
    """The manifest of projects/<name>/, checked: one ManifestError line for anything missing or unknown."""
    path = PROJECTS_DIR / name / "project.toml"
    if not path.is_file():
        known = ", ".join(project_names()) or "none"
        raise ManifestError(f"unknown project {name!r}: no {path.relative_to(REPO_ROOT)}; projects: {known}")
    try:
        manifest = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{path}: not valid TOML ({exc})") from None
    _check_keys(path, manifest, MANIFEST_KEYS, required=("description", "image", "launch"))
    _check_keys(path, manifest["launch"], LAUNCH_KEYS, required=("launcher",), section="launch.")
    images = image_hierarchy().order
    if manifest["image"] not in images:
        raise ManifestError(f"{path}: image = {manifest['image']!r} is not an image; images: {', '.join(images)}")
    launcher = manifest["launch"]["launcher"]
    if launcher not in LAUNCHERS:
        raise ManifestError(f"{path}: launch.launcher = {launcher!r}; use one of: {', '.join(LAUNCHERS)}")
    flags = manifest["launch"].get("layout_flags", [])
    if not all(isinstance(flag, str) for flag in flags):
        raise ManifestError(f'{path}: launch.layout_flags must be a list of strings such as "--devices", "{{gpus}}"')
    if launcher == "self" and not flags:
        raise ManifestError(f'{path}: launch.launcher = "self" needs launch.layout_flags (with {{nodes}} and {{gpus}})')
    if not (path.parent / "train.py").is_file():
        raise ManifestError(f"{path.parent.relative_to(REPO_ROOT)} has a project.toml but no train.py")
    return Project(name, manifest["description"], manifest["image"], launcher, tuple(flags), manifest.get("default", False))


def _check_keys(path: Path, table: dict, types: dict, required: tuple, section: str = "") -> None:
    for key in required:
        if key not in table:
            raise ManifestError(f"{path}: missing {section}{key}; see projects/README.md")
    for key, value in table.items():
        if key not in types:
            raise ManifestError(f"{path}: unknown key {section}{key}; keys: {', '.join(section + k for k in types)}")
        if not isinstance(value, types[key]):
            raise ManifestError(f"{path}: {section}{key} must be a {types[key].__name__}, not {value!r}")


def default_project() -> str:
    """The project with `default = true`, else the first one."""
    names = project_names()
    marked = [name for name in names if load(name).default]
    if len(marked) > 1:
        raise ManifestError(f"projects {', '.join(marked)} all set default = true; keep one")
    if not (marked or names):
        raise ManifestError("no project under projects/: make new-project NAME=<name> writes one")
    return (marked or names)[0]


def main(argv: list[str]) -> None:
    command, *rest = argv or ["projects"]
    if command == "projects":
        print(" ".join(project_names()))
    elif command == "default":
        print(default_project())
    elif command in ("check", "image") and len(rest) == 1:
        project = load(rest[0])
        if command == "image":
            print(project.image)
    elif command == "launch" and len(rest) in (2, 3):
        print(shlex.join(load(rest[0]).launch(int(rest[1] or 1), *rest[2:])))
    elif command == "layout" and len(rest) == 3:
        print(shlex.join(load(rest[0]).layout(int(rest[1]), int(rest[2]))))
    else:
        raise ManifestError(f"usage: {__doc__.strip().splitlines()[2].strip()} (see the docstring of {__file__})")


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except ManifestError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
