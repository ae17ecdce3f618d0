"""Read one EuroSAT image as an integer (H, W, C) array; pick bands; the articles' scaling."""

from __future__ import annotations

import logging
import struct
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

# The baseline TIFF tags read_plain_tiff needs (TIFF 6.0); it ignores the rest, such as GeoTIFF's.
WIDTH, LENGTH, BITS, COMPRESSION, STRIP_OFFSETS, SAMPLES, STRIP_BYTES, PLANAR, SAMPLE_FORMAT = (
    256, 257, 258, 259, 273, 277, 279, 284, 339,
)  # fmt: skip
TAG_TYPES = {3: "H", 4: "I"}  # SHORT and LONG, the types these tags come in


def read_plain_tiff(data: bytes) -> np.ndarray | None:
    """The (H, W, C) pixels of a single-page, uncompressed, striped integer TIFF, such as every official EuroSAT
    file, or None for any other TIFF (tifffile reads those). Decoding is the whole cost of a prepare, and
    reading the few tags with struct takes a sixth of the time of tifffile's general reader."""
    if data[:4] not in (b"II*\0", b"MM\0*") or len(data) < 10:
        return None
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    (entries,) = struct.unpack_from(order + "H", data, ifd) if ifd + 2 <= len(data) else (0,)
    end = ifd + 2 + 12 * entries
    if entries == 0 or end + 4 > len(data) or struct.unpack_from(order + "I", data, end) != (0,):  # 0: one page
        return None
    tags = {}
    for tag, kind, count, value in struct.iter_unpack(order + "HHI4s", data[ifd + 2 : end]):
        if tag in (WIDTH, LENGTH, BITS, COMPRESSION, STRIP_OFFSETS, SAMPLES, STRIP_BYTES, PLANAR, SAMPLE_FORMAT):
            if kind not in TAG_TYPES:
                return None
            size = struct.calcsize(TAG_TYPES[kind]) * count
            if size > 4:  # the values do not fit the entry, which holds their offset instead
                (offset,) = struct.unpack(order + "I", value)
                value = data[offset : offset + size]
            if len(value) < size:
                return None
            tags[tag] = struct.unpack_from(f"{order}{count}{TAG_TYPES[kind]}", value)
    bits, sample_format = set(tags.get(BITS, (1,))), set(tags.get(SAMPLE_FORMAT, (1,)))
    if not {WIDTH, LENGTH, STRIP_OFFSETS, STRIP_BYTES} <= tags.keys() or tags.get(COMPRESSION, (1,)) != (1,):
        return None
    if len(bits) != 1 or bits - {8, 16, 32} or len(sample_format) != 1 or sample_format - {1, 2}:
        return None  # mixed, packed or float samples
    dtype = np.dtype(f"{order}{'i' if sample_format == {2} else 'u'}{bits.pop() // 8}")
    (width,), (height,), (samples,) = tags[WIDTH], tags[LENGTH], tags.get(SAMPLES, (1,))
    strips = list(zip(tags[STRIP_OFFSETS], tags[STRIP_BYTES], strict=False))
    pixels = b"".join(data[offset : offset + size] for offset, size in strips)
    if len(pixels) != width * height * samples * dtype.itemsize:  # truncated, or strips that do not add up
        return None
    array = np.frombuffer(pixels, dtype).astype(dtype.newbyteorder("="), copy=False)
    if tags.get(PLANAR, (1,)) == (2,):
        return array.reshape(samples, height, width).transpose(1, 2, 0)
    return array.reshape(height, width, samples)


def read_image(path: Path) -> np.ndarray:
    path = Path(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            array = read_plain_tiff(path.read_bytes())
            if array is None:
                array = tifffile.imread(path)
        else:
            with Image.open(path) as image:
                array = np.asarray(image)
    except Exception as exc:  # any decoder error means the file is unusable
        raise UserError(f"cannot read {path} ({exc.__class__.__name__}): the file is corrupt; replace or delete it") from None
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3 and array.shape[0] < array.shape[2]:  # planar (C, H, W) TIFF
        array = array.transpose(1, 2, 0)
    if array.ndim != 3 or array.size == 0 or array.dtype.kind not in "iuf":
        raise UserError(
            f"{path} decodes to shape {array.shape} ({array.dtype}), not an image: the file is corrupt; replace or delete it"
        )
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():  # a NaN pixel would be a NaN loss
        raise UserError(f"{path} has NaN or infinite pixels (nodata?): fill them, or leave the file out")
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
