"""Discover a EuroSAT tree: class folders in sorted order, image files listed per class."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from eurosat.cli import is_main_process
from eurosat.errors import UserError

IMAGE_FORMATS = {".tif": "tif", ".tiff": "tif", ".jpg": "jpg", ".jpeg": "jpg"}
# The official zips unpack to nested folders such as ds/images/remote_sensing/otherDatasets/sentinel_2/tif
# (multispectral) or 2750 (RGB); the search descends that far.
MAX_DEPTH = 8
NO_DATA_HINT = "run `make data` (EuroSAT) or `make data-sample` (synthetic sample), or pass --data PATH"
# What copying a folder from a Mac, Windows or Jupyter adds: ignored without a word, like hidden files and folders
OS_LITTER = {"thumbs.db", "desktop.ini", "__macosx"}
_WARNED: set[tuple[Path, int]] = set()  # the data folders this process has already warned about


@dataclass(frozen=True)
class FileList:
    root: Path  # the folder that holds the class folders
    classes: tuple[str, ...]
    files: tuple[str, ...]  # paths relative to root, grouped by class
    labels: tuple[int, ...]
    image_format: str  # "tif" (13-band uint16) or "jpg" (RGB uint8)

    def paths(self) -> list[Path]:
        return [self.root / f for f in self.files]


def _visible(path: Path) -> bool:
    """Not hidden (.DS_Store, ._* files, .ipynb_checkpoints/, ...) and not OS litter (Thumbs.db, __MACOSX/, ...)."""
    return not path.name.startswith(".") and path.name.lower() not in OS_LITTER


def _holds_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_FORMATS for p in folder.iterdir() if _visible(p))


def find_root(data_dir: Path) -> Path:
    """The shallowest folder under data_dir whose sub-folders hold images (breadth-first, sorted)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise UserError(f"data directory {data_dir} not found: {NO_DATA_HINT}")
    level = [data_dir]
    for _ in range(MAX_DEPTH):
        for folder in level:
            subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p))
            if any(_holds_images(d) for d in subdirs):
                return folder
        level = [p for folder in level for p in sorted(folder.iterdir()) if p.is_dir() and _visible(p)]
        if not level:
            break
    raise UserError(f"no EuroSAT class folders with .tif or .jpg images under {data_dir}: {NO_DATA_HINT}")


def images_under(folder: Path, image_format: str) -> list[Path]:
    """Every image of one format in a folder and its sub-folders, sorted; hidden files and OS litter left out."""
    found = []
    for path in sorted(Path(folder).iterdir()):
        if not _visible(path):
            continue
        if path.is_dir():
            found += images_under(path, image_format)
        elif IMAGE_FORMATS.get(path.suffix.lower()) == image_format:
            found.append(path)
    return found


def list_files(data_dir: Path) -> FileList:
    root = find_root(data_dir)
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p)))
    files: list[str] = []
    labels: list[int] = []
    formats: set[str] = set()
    skipped: list[Path] = []
    for label, name in enumerate(classes):
        class_dir = root / name
        images = []
        for path in sorted(p for p in class_dir.iterdir() if _visible(p)):
            image_format = IMAGE_FORMATS.get(path.suffix.lower())
            if image_format is None or not path.is_file():
                skipped.append(path)
                continue
            formats.add(image_format)
            images.append(f"{name}/{path.name}")
        if not images:
            raise UserError(f"class folder {class_dir} holds no images: restore its files or remove the folder")
        files.extend(images)
        labels.extend([label] * len(images))
    if skipped and is_main_process() and (root, len(skipped)) not in _WARNED:  # torchvision's ImageFolder: silently
        _WARNED.add((root, len(skipped)))  # once a process, though a run lists its files more than once
        print(
            f"warning: skipped {len(skipped)} file(s) in the class folders of {root} that are not .tif or .jpg images "
            f"(the first: {skipped[0]})",
            file=sys.stderr,
        )
    if len(formats) > 1:
        raise UserError(f"{root} mixes .tif and .jpg images: keep one EuroSAT variant per data directory")
    return FileList(root, classes, tuple(files), tuple(labels), formats.pop())
