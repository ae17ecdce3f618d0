"""Write a small synthetic EuroSAT in the official on-disk format: <Class>/<Class>_<n>.tif, 13-band uint16 64x64,
with train/val/test lists in the published lists' format (60/20/20 of each class, for --split torchgeo).

Each class has its own spectrum and texture, so a model can learn it; nothing here is real imagery.
    python -m eurosat.sample --out data/eurosat [--fraction 0.02]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import tifffile

from eurosat import CLASS_NAMES
from eurosat.cli import ArgumentParser, run_cli
from eurosat.errors import UserError

OFFICIAL_COUNTS = dict(zip(CLASS_NAMES, (3000, 3000, 3000, 2500, 2500, 2000, 2500, 3000, 2500, 3000), strict=True))
SPLIT_SHARES = {"train": 0.6, "val": 0.2, "test": 0.2}  # the published lists' shares
MARKER = ".eurosat-sample"  # marks a folder this module wrote, so it may be replaced later
BANDS, SIZE = 13, 64


def _class_spectra() -> np.ndarray:
    """(classes, bands) mean digital numbers, fixed for all samples."""
    return np.random.default_rng(2019).uniform(300, 3500, size=(len(CLASS_NAMES), BANDS))


def synthetic_image(label: int, rng: np.random.Generator) -> np.ndarray:
    spectrum = _class_spectra()[label] * rng.uniform(0.95, 1.05)
    # Smooth class-dependent texture: a coarse random field whose cell size depends on the class.
    cells = 2 + label % 5
    field = rng.normal(size=(cells, cells))
    texture = np.kron(field, np.ones((SIZE // cells + 1, SIZE // cells + 1)))[:SIZE, :SIZE]
    image = spectrum * (1 + 0.08 * texture[:, :, None]) + rng.normal(0, 40, size=(SIZE, SIZE, BANDS))
    return np.clip(image, 0, 10000).astype(np.uint16)


def split_numbers(count: int, rng: np.random.Generator) -> dict[str, list[int]]:
    """The image numbers (1..count) of one class in each part, at least one in each."""
    shuffled = (rng.permutation(count) + 1).tolist()
    n_val = n_test = max(1, round(count * SPLIT_SHARES["test"]))
    return {"train": shuffled[n_val + n_test :], "val": shuffled[:n_val], "test": shuffled[n_val : n_val + n_test]}


def write_sample(out: Path, fraction: float = 0.02, seed: int = 0) -> int:
    """Write the sample into `out` (replacing an earlier sample); returns the number of files."""
    out = Path(out)
    if out.is_dir() and any(p for p in out.iterdir() if p.name != MARKER):
        if not (out / MARKER).exists():
            raise UserError(f"{out} already holds data that is not a synthetic sample: pass another --out")
        shutil.rmtree(out)
    rng = np.random.default_rng(seed)
    lists = {part: [] for part in SPLIT_SHARES}
    total = 0
    for label, name in enumerate(CLASS_NAMES):
        (out / name).mkdir(parents=True, exist_ok=True)
        count = max(5, round(OFFICIAL_COUNTS[name] * fraction))
        for n in range(1, count + 1):
            tifffile.imwrite(
                out / name / f"{name}_{n}.tif", synthetic_image(label, rng), photometric="minisblack", planarconfig="contig"
            )
        for part, numbers in split_numbers(count, np.random.default_rng([seed, label])).items():
            lists[part] += [f"{name}_{n}.jpg" for n in numbers]  # named as the published lists name them
        total += count
    for part, names in lists.items():
        (out / f"eurosat-{part}.txt").write_text("".join(f"{name}\n" for name in names))
    (out / MARKER).write_text("synthetic EuroSAT sample written by `python -m eurosat.sample`\n")
    return total


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/eurosat"), help="dataset folder (default: %(default)s)")
    parser.add_argument("--fraction", type=float, default=0.02, help="share of the official class sizes")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not 0 < args.fraction <= 1:
        parser.error(f"argument --fraction: {args.fraction} is not in (0, 1]")
    try:
        count = write_sample(args.out, args.fraction, args.seed)
    except OSError as exc:
        raise UserError(f"cannot write the sample to {args.out} ({exc.strerror})") from None
    print(f"wrote {count} synthetic 13-band TIFFs to {args.out}")


if __name__ == "__main__":
    run_cli(main)
