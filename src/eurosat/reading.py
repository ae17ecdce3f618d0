"""Read one EuroSAT image as an integer (H, W, C) array; pick bands; the articles' scaling."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from eurosat.errors import UserError

# Digital numbers divided by 4000 and clipped to [0, 1], as in the articles; JPEGs are 8-bit.
SCALE = {"tif": 4000.0, "jpg": 255.0}
RGB_BANDS = {13: (3, 2, 1), 3: (0, 1, 2)}  # B04, B03, B02 in the multispectral TIFFs
# tifffile logs damaged structures and returns what it could read; read_image reports them itself, in one line.
logging.getLogger("tifffile").setLevel(logging.CRITICAL)


def read_image(path: Path) -> np.ndarray:
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            with tifffile.TiffFile(path) as tiff:  # one page holding every band, as in the official files, is
                # decoded directly (a fifth faster than imread, which first assembles a series)
                array = tiff.pages.first.asarray() if len(tiff.pages) == 1 else tiff.series[0].asarray()
        else:
            with Image.open(path) as image:
                array = np.asarray(image)
    except Exception as exc:  # any decoder error means the file is unusable
        raise UserError(f"cannot read {path} ({exc.__class__.__name__}): the file is corrupt; replace or delete it") from None
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3 and array.shape[0] < array.shape[2]:  # planar (C, H, W) TIFF
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise UserError(
            f"{path} decodes to shape {array.shape} ({array.dtype}), not an image: the file is corrupt; replace or delete it"
        )
    return array


def parse_bands(spec: str, band_count: int) -> tuple[int, ...]:
    """`rgb` (red, green, blue), `all`, or 0-based channel numbers such as `3,2,1`."""
    if spec == "rgb":
        if band_count not in RGB_BANDS:
            raise UserError(f"--bands rgb: images have {band_count} bands, expected 13 or 3; pass channel numbers")
        return RGB_BANDS[band_count]
    if spec == "all":
        return tuple(range(band_count))
    try:
        bands = tuple(int(b) for b in spec.split(","))
    except ValueError:
        raise UserError(f"--bands {spec!r}: use rgb, all or comma-separated channel numbers such as 3,2,1") from None
    bad = [b for b in bands if not 0 <= b < band_count]
    if bad:
        raise UserError(
            f"--bands {spec}: channel {bad[0]} does not exist, the images have {band_count} bands (0-{band_count - 1})"
        )
    return bands
