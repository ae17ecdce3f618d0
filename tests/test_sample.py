import numpy as np
import pytest
import tifffile

from eurosat import CLASS_NAMES
from eurosat.errors import UserError
from eurosat.files import list_files
from eurosat.sample import MARKER, write_sample


def test_sample_has_the_official_layout_and_format(sample_dir):
    assert sorted(p.name for p in sample_dir.iterdir() if p.is_dir()) == sorted(CLASS_NAMES)
    forest = sorted(p.name for p in (sample_dir / "Forest").iterdir())
    assert forest[0] == "Forest_1.tif" and len(forest) == 60 and f"Forest_{len(forest)}.tif" in forest
    image = tifffile.imread(sample_dir / "Highway" / "Highway_1.tif")
    assert image.shape == (64, 64, 13) and image.dtype == np.uint16
    with tifffile.TiffFile(sample_dir / "Highway" / "Highway_1.tif") as tiff:  # one page, 13 samples a pixel
        (page,) = tiff.pages
        assert page.samplesperpixel == 13 and page.planarconfig == tifffile.PLANARCONFIG.CONTIG
    assert len(list_files(sample_dir).files) == 540


def test_classes_differ_in_the_rgb_bands(sample_dir):
    """A nearest-centroid rule on mean red/green/blue separates the classes: a model can learn them."""
    listing = list_files(sample_dir)
    means = np.array([tifffile.imread(p)[:, :, [3, 2, 1]].mean(axis=(0, 1)) for p in listing.paths()])
    labels = np.array(listing.labels)
    centroids = np.array([means[labels == k].mean(0) for k in range(10)])
    predicted = np.argmin(((means[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == labels).mean() > 0.6


def test_sample_replaces_a_sample_but_never_real_data(tmp_path):
    out = tmp_path / "eurosat"
    write_sample(out, fraction=0.001)
    write_sample(out, fraction=0.001, seed=1)  # replacing an earlier sample is fine
    assert (out / MARKER).exists()
    real = tmp_path / "real"
    (real / "Forest").mkdir(parents=True)
    (real / "Forest" / "Forest_1.tif").write_bytes(b"keep me")
    with pytest.raises(UserError, match="not a synthetic sample"):
        write_sample(real, fraction=0.001)
    assert (real / "Forest" / "Forest_1.tif").read_bytes() == b"keep me"
