"""Decode every image once into a (N, bands, H, W) integer array on disk, memory-mapped by every epoch after.

The cache key covers the file list (relative path, size and modification time of every file), the band
choice and the cache format, so adding, removing, replacing or touching a file builds a new cache: a cache
is never silently stale. A cache is complete only once its manifest exists; both files are written to
temporary names and renamed into place. The manifest records the array's shape, dtype, size and checksum, and
every process checks them before it uses the array: a cache damaged after it was complete (a full disk, a killed
copy, a bad sector) is removed and built again, with one warning line.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import multiprocessing
import os
import signal
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from eurosat.errors import UserError
from eurosat.files import FileList, list_files
from eurosat.reading import SCALE, parse_bands, read_image

CACHE_FORMAT = 3  # 2: the manifest records the image format and the band count of the files; 3: the array's checksum
READ_BLOCK = 16 * 2**20
CHUNK = 256  # images a worker decodes per task


@dataclass(frozen=True)
class CachedImages:
    images: np.ndarray  # (N, bands, H, W) memmap of the raw digital numbers
    labels: np.ndarray  # (N,) int64
    classes: tuple[str, ...]
    bands: tuple[int, ...]
    scale: float  # divide by this, then clip to [0, 1]
    image_format: str  # "tif" or "jpg", as files.IMAGE_FORMATS names them
    band_count: int  # bands in each file, before the band choice
    files: tuple[str, ...]
    root: Path
    path: Path  # the .npy file


def default_cache_dir() -> Path:
    """$EUROSAT_CACHE_DIR, else .cache/eurosat under the working directory: the folder `make` gives every runner
    (containers mount it at /cache), so switching between a venv and a container decodes nothing again."""
    return Path(os.environ.get("EUROSAT_CACHE_DIR") or Path(".cache") / "eurosat")


def cache_key(file_list: FileList, bands: tuple[int, ...]) -> str:
    digest = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "bands": bands}).encode())
    for name in file_list.files:
        stat = (file_list.root / name).stat()
        digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def _replace_atomically(tmp: Path, final: Path) -> None:
    with open(tmp, "rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, final)


def _decode_into(npy: Path, bands: tuple[int, ...], like: tuple, chunk: tuple[int, list[Path]]) -> int:
    """Decode a chunk (its first row, its paths) into the rows of the .npy file; returns how many. Each image must
    have the shape and type in `like`, the first image's."""
    start, paths = chunk
    array = np.load(npy, mmap_mode="r+")  # shared: the rows reach the page cache, fsynced once at the end
    (height, width, band_count), dtype = like
    for i, path in enumerate(paths, start):
        image = read_image(path)
        if image.shape != (height, width, band_count) or image.dtype != dtype:
            raise UserError(
                f"{path} is {image.shape[0]}x{image.shape[1]} with {image.shape[2]} bands ({image.dtype}), "
                f"expected {height}x{width} with {band_count} bands ({dtype}) like the other images: "
                "replace or delete it"
            )
        array[i] = image[:, :, bands].transpose(2, 0, 1)
    return len(paths)


def _default_signals() -> None:
    """In a worker: forget the parent's handlers. train.py's SIGTERM handler only sets a flag, so a worker
    inheriting it would outlive the pool's terminate and hang the join; Ctrl-C is the parent's to handle."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _build(file_list: FileList, bands: tuple[int, ...], first: np.ndarray, npy: Path, progress: bool) -> None:
    """Decoding is the whole cost of a prepare: one process per core, each writing its chunks straight into
    the memory-mapped file (sending arrays back to one writer would cost as much as decoding them)."""
    height, width, _ = first.shape
    tmp = npy.with_name(f"{npy.name}.tmp-{os.getpid()}")
    paths = file_list.paths()
    chunks = [(start, paths[start : start + CHUNK]) for start in range(0, len(paths), CHUNK)]
    workers = min(os.cpu_count() or 1, 8, len(chunks))
    try:
        np.lib.format.open_memmap(tmp, mode="w+", dtype=first.dtype, shape=(len(paths), len(bands), height, width))
        decode = functools.partial(_decode_into, tmp, bands, (first.shape, first.dtype))
        bar = tqdm(total=len(paths), desc="prepare cache", unit="img", disable=None if progress else True, file=sys.stderr)
        with bar:  # disable=None: off when not a terminal
            if workers == 1:
                for chunk in chunks:
                    bar.update(decode(chunk))
            else:
                # fork: the workers need nothing but this module, and start at once (spawn would import torch again)
                methods = multiprocessing.get_all_start_methods()
                context = multiprocessing.get_context("fork" if "fork" in methods else None)
                with context.Pool(workers, initializer=_default_signals) as pool:
                    for done in pool.imap_unordered(decode, chunks):
                        bar.update(done)
                    pool.close()  # workers leave on their own; the with-block's terminate is for errors only
                    pool.join()
        _replace_atomically(tmp, npy)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(path: Path, exclusive: bool):
    """An advisory lock on one cache entry, for processes meeting it at once (ranks, runs); where the file system
    offers none (some cluster mounts) or the folder is read-only, no lock."""
    try:
        handle = open(path, "a")  # noqa: SIM115 (closed by the with-block below, which releases the lock)
    except OSError:
        yield
        return
    with handle:
        with contextlib.suppress(OSError):
            fcntl.flock(handle, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield


def checksum(path: Path) -> str:
    """CRC-32 of the whole file: about a second per GB, so a damaged block anywhere is found before it is used."""
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(READ_BLOCK):
            crc = zlib.crc32(block, crc)
    return f"crc32:{crc:08x}"


def damage(npy: Path, manifest: Path) -> str | None:
    """Why the cache cannot be used as it is (None: it can): unreadable, or unlike what its manifest records."""
    try:
        recorded = json.loads(manifest.read_text())["array"]
        images = np.load(npy, mmap_mode="r")
        size = npy.stat().st_size
    except (OSError, ValueError, KeyError, TypeError) as exc:  # a truncated .npy: "mmap length is greater than ..."
        return f"unreadable: {exc.__class__.__name__}: {exc}"
    if [list(images.shape), str(images.dtype), size] != [recorded["shape"], recorded["dtype"], recorded["bytes"]]:
        return f"{size} bytes holding {images.shape} {images.dtype}, its manifest says {recorded['bytes']} bytes"
    if checksum(npy) != recorded["checksum"]:
        return "its checksum differs from its manifest's"
    return None


def _state(npy: Path, manifest: Path) -> str | None:
    """None for a sound cache, "missing" when it was never completed, else what is damaged."""
    return damage(npy, manifest) if npy.exists() and manifest.exists() else "missing"


def _write_manifest(manifest: Path, file_list: FileList, band_choice: tuple, band_count: int, npy: Path) -> None:
    images = np.load(npy, mmap_mode="r")
    array = {"shape": list(images.shape), "dtype": str(images.dtype), "bytes": npy.stat().st_size, "checksum": checksum(npy)}
    tmp = manifest.with_name(f"{manifest.name}.tmp-{os.getpid()}")
    tmp.write_text(
        json.dumps(
            {
                "format": CACHE_FORMAT,
                "root": str(file_list.root),
                "classes": file_list.classes,
                "bands": band_choice,
                "scale": SCALE[file_list.image_format],
                "image_format": file_list.image_format,
                "band_count": band_count,
                "files": file_list.files,
                "labels": file_list.labels,
                "array": array,
            }
        )
    )
    _replace_atomically(tmp, manifest)


class _PhaseClock:
    """Seconds per phase into a dict, or nothing."""

    def __init__(self, timings: dict | None):
        self.timings, self.last = timings, time.perf_counter()

    def done(self, phase: str) -> None:
        if self.timings is not None:
            now = time.perf_counter()
            self.timings[phase] = now - self.last
            self.last = now


def prepare(
    data_dir: Path, bands: str = "rgb", cache_dir: Path | None = None, progress: bool = True, timings: dict | None = None
) -> CachedImages:
    """Build the cache for this data and band choice if it does not exist yet (or is damaged), then open it. With
    `timings`, the seconds of each phase go into it (bench/startup.py)."""
    clock = _PhaseClock(timings)
    file_list = list_files(Path(data_dir))
    first = read_image(file_list.root / file_list.files[0])
    band_choice = parse_bands(bands, first.shape[2])
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    clock.done("list the files")
    key = cache_key(file_list, band_choice)
    clock.done("cache key (every file's size and time)")
    npy, manifest, lock = (cache_dir / f"{key}{suffix}" for suffix in (".npy", ".json", ".lock"))
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        with _locked(lock, exclusive=False):  # checks run side by side; a build has the entry to itself
            problem = _state(npy, manifest)
        if problem is not None:
            with _locked(lock, exclusive=True):
                problem = _state(npy, manifest)  # another process may have built it meanwhile
                if problem not in (None, "missing"):
                    print(f"warning: the cache {npy} is damaged ({problem}): removing it and building it again", file=sys.stderr)
                    manifest.unlink()  # the manifest first: without it, no process takes the array as complete
                    npy.unlink()
                if problem is not None:
                    _build(file_list, band_choice, first, npy, progress)
                    _write_manifest(manifest, file_list, band_choice, first.shape[2], npy)
    except OSError as exc:
        raise UserError(f"cannot write the cache in {cache_dir} ({exc.strerror}): pass --cache-dir PATH") from None
    clock.done("cache check (shape, size, checksum)")
    meta = json.loads(manifest.read_text())
    clock.done("read the manifest")
    return CachedImages(
        images=np.load(npy, mmap_mode="r"),
        labels=np.asarray(meta["labels"], dtype=np.int64),
        classes=tuple(meta["classes"]),
        bands=tuple(meta["bands"]),
        scale=float(meta["scale"]),
        image_format=meta["image_format"],
        band_count=int(meta["band_count"]),
        files=tuple(meta["files"]),
        root=file_list.root,
        path=npy,
    )
