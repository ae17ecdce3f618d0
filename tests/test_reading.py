import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage import io as skio

from eurosat.datasets import as_tensor, to_input
from eurosat.errors import UserError
from eurosat.files import list_files
from eurosat.reading import parse_bands, read_image, read_plain_tiff

BAND_VALUES = np.array([100, 900, 1900, 2900, 3900, 4500, 5000, 6000, 7000, 12, 732, 1500, 2594], dtype=np.uint16)


def write_tif(path, image, planarconfig="contig"):
    """One page with a sample per band, like the official (GDAL pixel-interleaved) files; or band-planar."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, image, photometric="minisblack", planarconfig=planarconfig)


def constant_bands(shape=(64, 64)):
    return np.broadcast_to(BAND_VALUES, (*shape, 13)).copy()


def test_reads_13_band_tiff_like_skimage(tmp_path):
    image = constant_bands()
    image[5, 7, 3] = 1234
    write_tif(tmp_path / "a.tif", image)
    array = read_image(tmp_path / "a.tif")
    assert array.shape == (64, 64, 13) and array.dtype == np.uint16
    assert np.array_equal(array, skio.imread(tmp_path / "a.tif"))  # the articles' reader sees the same pixels
    assert array[5, 7, 3] == 1234


def test_planar_tiff_is_read_as_height_width_bands(tmp_path):
    write_tif(tmp_path / "planar.tif", constant_bands().transpose(2, 0, 1), planarconfig="separate")
    assert read_image(tmp_path / "planar.tif").shape == (64, 64, 13)


PLAIN_LAYOUTS = {  # what read_plain_tiff decodes itself: single-page, uncompressed, striped integer TIFFs
    "pixel-interleaved, one strip": dict(planarconfig="contig"),
    "band-planar": dict(planarconfig="separate", shape=(13, 64, 64)),
    "many strips": dict(planarconfig="contig", rowsperstrip=5),
    "big-endian": dict(planarconfig="contig", byteorder=">"),
    "int16": dict(planarconfig="contig", dtype=np.int16, shape=(64, 64, 3)),
    "uint8 grey": dict(dtype=np.uint8, shape=(64, 64)),
}
OTHER_LAYOUTS = {  # left to tifffile
    "deflate": dict(planarconfig="contig", compression="zlib"),
    "tiled": dict(planarconfig="contig", tile=(16, 16)),
    "float": dict(planarconfig="contig", dtype=np.float32),
    "BigTIFF": dict(planarconfig="contig", bigtiff=True),
    "two pages": dict(shape=(2, 64, 64)),
}


def write_layout(path, layout):
    layout = dict(layout)
    shape, dtype = layout.pop("shape", (64, 64, 13)), np.dtype(layout.pop("dtype", np.uint16))
    rng = np.random.default_rng(0)
    image = rng.random(shape).astype(dtype) if dtype.kind == "f" else rng.integers(0, 127, shape).astype(dtype)
    tifffile.imwrite(path, image, photometric="minisblack", **layout)
    return image if len(shape) == 2 or shape[0] > shape[2] else image.transpose(1, 2, 0)


@pytest.mark.parametrize("layout", PLAIN_LAYOUTS)
def test_plain_tiffs_are_decoded_directly_to_the_same_pixels(tmp_path, layout):
    expected = write_layout(tmp_path / "a.tif", PLAIN_LAYOUTS[layout])
    direct = read_plain_tiff((tmp_path / "a.tif").read_bytes())
    assert direct is not None and direct.dtype == expected.dtype and direct.dtype.isnative
    assert np.array_equal(direct, expected.reshape(direct.shape))
    assert np.array_equal(read_image(tmp_path / "a.tif"), direct)


@pytest.mark.parametrize("layout", OTHER_LAYOUTS)
def test_other_tiffs_are_left_to_tifffile(tmp_path, layout):
    expected = write_layout(tmp_path / "a.tif", OTHER_LAYOUTS[layout])
    assert read_plain_tiff((tmp_path / "a.tif").read_bytes()) is None
    if layout != "two pages":  # two pages decode as a (pages, H, W) stack, not an EuroSAT image (a float raster is
        # read as it is: --normalize band-stats trains on it)
        assert np.array_equal(read_image(tmp_path / "a.tif"), expected)


@pytest.mark.parametrize("length", [0, 9, 120, 300, 100_000])
def test_truncated_tiff_is_reported_as_corrupt(tmp_path, length):
    write_tif(tmp_path / "whole.tif", constant_bands())
    (tmp_path / "cut.tif").write_bytes((tmp_path / "whole.tif").read_bytes()[:length])
    assert read_plain_tiff((tmp_path / "cut.tif").read_bytes()) is None
    with pytest.raises(UserError, match="cut.tif .*corrupt"):
        read_image(tmp_path / "cut.tif")


def test_rgb_bands_and_articles_scaling(tmp_path):
    write_tif(tmp_path / "a.tif", constant_bands())
    bands = parse_bands("rgb", 13)
    assert bands == (3, 2, 1)  # B04 red, B03 green, B02 blue
    chw = torch.from_numpy(read_image(tmp_path / "a.tif")[:, :, bands].transpose(2, 0, 1).copy())
    x = to_input(chw[None], 4000.0, torch.device("cpu"))
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([2900 / 4000, 1900 / 4000, 900 / 4000]))
    bright = torch.full((1, 1, 2, 2), 5000, dtype=torch.int32)
    assert to_input(bright, 4000.0, torch.device("cpu")).max() == 1.0  # clipped to [0, 1]


def test_uint16_sent_as_int16_bits_scales_like_uint16():
    """GPUs get uint16 as int16 (few CUDA kernels take uint16); values of 32768 and up must not turn negative."""
    raw = np.array([[[[0, 1999, 4000, 32767, 32768, 40000, 65535]]]], dtype=np.uint16)
    as_int16 = as_tensor(raw, for_cuda=True)
    assert as_int16.dtype == torch.int16 and as_tensor(raw).dtype == torch.uint16
    expected = torch.tensor([0, 1999 / 4000, 1, 1, 1, 1, 1])
    for images in (as_int16, as_tensor(raw)):
        assert torch.allclose(to_input(images, 4000.0, torch.device("cpu"), channels_last=False).flatten(), expected)
    exact = to_input(as_int16, 65535.0, torch.device("cpu"), channels_last=False).flatten()
    assert torch.allclose(exact, torch.from_numpy(raw.astype(np.float32)).flatten() / 65535)


def test_band_choices():
    assert parse_bands("all", 13) == tuple(range(13))
    assert parse_bands("7,3,2", 13) == (7, 3, 2)
    assert parse_bands("rgb", 3) == (0, 1, 2)
    with pytest.raises(UserError, match="channel 13 does not exist"):
        parse_bands("13,2,1", 13)
    with pytest.raises(UserError, match="--bands"):
        parse_bands("red", 13)


def test_finds_the_nested_folder_of_the_official_multispectral_zip(tmp_path):
    nested = tmp_path / "ds/images/remote_sensing/otherDatasets/sentinel_2/tif"
    for name in ("Forest", "AnnualCrop"):
        write_tif(nested / name / f"{name}_1.tif", constant_bands())
    listing = list_files(tmp_path)
    assert listing.root == nested and listing.classes == ("AnnualCrop", "Forest") and listing.image_format == "tif"


def test_rgb_jpeg_layout(tmp_path):
    for name in ("River", "Forest"):
        (tmp_path / "2750" / name).mkdir(parents=True)
        Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(tmp_path / "2750" / name / f"{name}_1.jpg")
    listing = list_files(tmp_path)
    assert listing.root == tmp_path / "2750" and listing.image_format == "jpg"
    assert read_image(listing.paths()[0]).shape == (64, 64, 3)
    assert parse_bands("rgb", 3) == (0, 1, 2)


def test_hidden_files_are_ignored(tmp_path):
    write_tif(tmp_path / "Forest" / "Forest_1.tif", constant_bands())
    (tmp_path / "Forest" / ".DS_Store").write_bytes(b"\0")
    assert list_files(tmp_path).files == ("Forest/Forest_1.tif",)
