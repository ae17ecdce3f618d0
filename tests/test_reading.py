import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from skimage import io as skio

from eurosat.datasets import to_input
from eurosat.errors import UserError
from eurosat.files import list_files
from eurosat.reading import parse_bands, read_image

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


def test_rgb_bands_and_articles_scaling(tmp_path):
    write_tif(tmp_path / "a.tif", constant_bands())
    bands = parse_bands("rgb", 13)
    assert bands == (3, 2, 1)  # B04 red, B03 green, B02 blue
    chw = torch.from_numpy(read_image(tmp_path / "a.tif")[:, :, bands].transpose(2, 0, 1).copy())
    x = to_input(chw[None], 4000.0, torch.device("cpu"))
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([2900 / 4000, 1900 / 4000, 900 / 4000]))
    bright = torch.full((1, 1, 2, 2), 5000, dtype=torch.int32)
    assert to_input(bright, 4000.0, torch.device("cpu")).max() == 1.0  # clipped to [0, 1]


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
