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


def truncate(path, keep: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(keep)


def flip_a_byte(path, offset: int) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize(
    "damage, why",
    [
        (lambda cache: truncate(cache.path, cache.path.stat().st_size // 2), "unreadable: ValueError: mmap length"),
        (lambda cache: flip_a_byte(cache.path, cache.path.stat().st_size - 100), "checksum differs"),
        (lambda cache: truncate(cache.path.with_suffix(".json"), 40), "unreadable: JSONDecodeError"),
        (lambda cache: cache.path.write_bytes(cache.path.read_bytes() + b"\0" * 64), "bytes holding"),
    ],
    ids=["truncated array", "a damaged block", "truncated manifest", "grown array"],
)
def test_a_damaged_cache_is_removed_and_built_again_with_one_warning(small, tmp_path, capsys, damage, why):
    first = prepare(small, "rgb", tmp_path / "cache", progress=False)
    expected = np.array(first.images)
    damage(first)
    capsys.readouterr()
    again = prepare(small, "rgb", tmp_path / "cache", progress=False)
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"warning: the cache {first.path} is damaged (") and why in line
    assert line.endswith("): removing it and building it again")
    assert again.path == first.path and np.array_equal(again.images, expected)
    prepare(small, "rgb", tmp_path / "cache", progress=False)
    assert capsys.readouterr().err == ""  # healed: the next process uses it without a word


def test_processes_meeting_one_damaged_cache_at_once_each_get_a_sound_one(small, tmp_path):
    first = prepare(small, "rgb", tmp_path / "cache", progress=False)
    expected = np.array(first.images)
    truncate(first.path, 1000)
    code = (
        "import sys, numpy as np; from eurosat.cache import prepare; "
        f"c = prepare({str(small)!r}, 'rgb', {str(tmp_path / 'cache')!r}, progress=False); "
        "np.save(sys.argv[1], np.array(c.images))"
    )
    processes = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / f"seen{i}.npy")]) for i in range(3)]
    assert [process.wait(timeout=120) for process in processes] == [0, 0, 0]
    for i in range(3):
        assert np.array_equal(np.load(tmp_path / f"seen{i}.npy"), expected)
    assert prepare(small, "rgb", tmp_path / "cache", progress=False).path == first.path


def test_a_failed_build_leaves_no_cache_behind(small, tmp_path):
    (small / "River" / "River_2.tif").write_bytes(b"not a tiff")
    with pytest.raises(UserError, match="River_2.tif"):
        prepare(small, "rgb", tmp_path / "cache", progress=False)
    assert [path.name for path in (tmp_path / "cache").iterdir() if path.suffix != ".lock"] == []  # the lock may stay


def test_worker_processes_fill_every_row_and_report_a_bad_file(small, tmp_path, monkeypatch):
    monkeypatch.setattr(eurosat.cache, "CHUNK", 8)  # 7 chunks for 50 images: several worker processes
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    cached = prepare(small, "all", tmp_path / "cache", progress=False)
    for i, name in enumerate(cached.files):
        assert np.array_equal(cached.images[i], tifffile.imread(small / name).transpose(2, 0, 1)), name

    tifffile.imwrite(small / "Pasture" / "Pasture_3.tif", np.ones((64, 64, 4), np.uint16), photometric="minisblack")
    with pytest.raises(UserError, match="Pasture_3.tif is 64x64 with 4 bands"):
        prepare(small, "all", tmp_path / "other-cache", progress=False)
    assert [path for path in (tmp_path / "other-cache").iterdir() if path.suffix != ".lock"] == []


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
