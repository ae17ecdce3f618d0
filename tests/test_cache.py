import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import tifffile

import eurosat.cache
from eurosat.cache import prepare
from eurosat.errors import UserError
from eurosat.sample import write_sample


@pytest.fixture
def small(tmp_path):
    data = tmp_path / "eurosat"
    write_sample(data, fraction=0.001)  # the minimum: 5 images per class
    return data


def test_cache_holds_the_selected_bands_of_every_image(small, tmp_path):
    cached = prepare(small, "rgb", tmp_path / "cache", progress=False)
    assert cached.images.shape == (50, 3, 64, 64) and cached.images.dtype == np.uint16
    assert cached.scale == 4000.0 and cached.bands == (3, 2, 1)
    for i in (0, 17, 49):
        original = tifffile.imread(small / cached.files[i])
        assert np.array_equal(cached.images[i], original[:, :, [3, 2, 1]].transpose(2, 0, 1))
    assert cached.labels.tolist() == [i // 5 for i in range(50)]


def test_cache_is_reused_without_decoding(small, tmp_path, monkeypatch):
    first = prepare(small, "rgb", tmp_path / "cache", progress=False)
    stamp = os.stat(first.path).st_mtime_ns
    decoded = []
    monkeypatch.setattr(eurosat.cache, "read_image", lambda p: decoded.append(p) or tifffile.imread(p))
    again = prepare(small, "rgb", tmp_path / "cache", progress=False)
    assert again.path == first.path and os.stat(again.path).st_mtime_ns == stamp
    assert len(decoded) <= 1  # only the first file, to learn the band count; no rebuild


def test_cache_is_rebuilt_when_the_data_changes(small, tmp_path):
    first = prepare(small, "rgb", tmp_path / "cache", progress=False)
    changed = small / first.files[3]
    image = tifffile.imread(changed)
    image[:] = 77
    tifffile.imwrite(changed, image, photometric="minisblack", planarconfig="contig")
    second = prepare(small, "rgb", tmp_path / "cache", progress=False)
    assert second.path != first.path and (second.images[3] == 77).all()

    tifffile.imwrite(small / "Forest" / "Forest_99.tif", image, photometric="minisblack", planarconfig="contig")
    third = prepare(small, "rgb", tmp_path / "cache", progress=False)
    assert third.path != second.path and len(third.files) == 51

    all_bands = prepare(small, "all", tmp_path / "cache", progress=False)
    assert all_bands.path != third.path and all_bands.images.shape[1] == 13


def test_a_failed_build_leaves_no_cache_behind(small, tmp_path):
    (small / "River" / "River_2.tif").write_bytes(b"not a tiff")
    with pytest.raises(UserError, match="River_2.tif"):
        prepare(small, "rgb", tmp_path / "cache", progress=False)
    assert list((tmp_path / "cache").iterdir()) == []


def test_worker_processes_fill_every_row_and_report_a_bad_file(small, tmp_path, monkeypatch):
    monkeypatch.setattr(eurosat.cache, "CHUNK", 8)  # 7 chunks for 50 images: several worker processes
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    cached = prepare(small, "all", tmp_path / "cache", progress=False)
    for i, name in enumerate(cached.files):
        assert np.array_equal(cached.images[i], tifffile.imread(small / name).transpose(2, 0, 1)), name

    tifffile.imwrite(small / "Pasture" / "Pasture_3.tif", np.ones((64, 64, 4), np.uint16), photometric="minisblack")
    with pytest.raises(UserError, match="Pasture_3.tif is 64x64 with 4 bands"):
        prepare(small, "all", tmp_path / "other-cache", progress=False)
    assert list((tmp_path / "other-cache").iterdir()) == []


PREPARE_UNDER_A_FLAG_HANDLER = """
import os, shutil, signal, sys
from pathlib import Path
import eurosat.cache
signal.signal(signal.SIGTERM, lambda *_: print("a worker kept the parent's SIGTERM handler", file=sys.stderr))
eurosat.cache.CHUNK = 8  # 7 chunks of the 50 images, on at least 2 worker processes
os.cpu_count = lambda: 2
for attempt in range(20):
    shutil.rmtree(sys.argv[2], ignore_errors=True)
    eurosat.cache.prepare(Path(sys.argv[1]), "rgb", Path(sys.argv[2]), progress=False)
"""


def test_workers_leave_cleanly_under_train_py_signal_handler(small, tmp_path):
    """train.py's SIGTERM handler only sets a flag; workers forked from it must not keep it (a pool's terminate
    then could not stop them, and the prepare hung)."""
    process = subprocess.Popen(
        [sys.executable, "-c", PREPARE_UNDER_A_FLAG_HANDLER, small, tmp_path / "cache"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the hung workers too
        raise AssertionError(f"prepare hung: {process.communicate()[1]}") from None
    assert process.returncode == 0 and stderr == "", stderr
