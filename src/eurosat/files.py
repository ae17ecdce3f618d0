"""Discover a EuroSAT tree: class folders in sorted order, image files listed per class."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eurosat.errors import UserError

IMAGE_FORMATS = {".tif": "tif", ".tiff": "tif", ".jpg": "jpg", ".jpeg": "jpg"}
# The official zips unpack to nested folders such as ds/images/remote_sensing/otherDatasets/sentinel_2/tif
# (multispectral) or 2750 (RGB); the search descends that far.
MAX_DEPTH = 8
NO_DATA_HINT = "run `make data` (EuroSAT) or `make data-sample` (synthetic sample), or pass --data PATH"


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
    return not path.name.startswith(".")


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


def list_files(data_dir: Path) -> FileList:
    root = find_root(data_dir)
    classes = tuple(sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p)))
    files: list[str] = []
    labels: list[int] = []
    formats: set[str] = set()
    for label, name in enumerate(classes):
        class_dir = root / name
        images = []
        for path in sorted(p for p in class_dir.iterdir() if _visible(p)):
            image_format = IMAGE_FORMATS.get(path.suffix.lower())
            if image_format is None or not path.is_file():
                raise UserError(f"{path} is not a EuroSAT image (.tif or .jpg): move it out of the class folder {class_dir}")
            formats.add(image_format)
            images.append(f"{name}/{path.name}")
        if not images:
            raise UserError(f"class folder {class_dir} holds no images: restore its files or remove the folder")
        files.extend(images)
        labels.extend([label] * len(images))
    if len(formats) > 1:
        raise UserError(f"{root} mixes .tif and .jpg images: keep one EuroSAT variant per data directory")
    return FileList(root, classes, tuple(files), tuple(labels), formats.pop())
