"""Download EuroSAT from a public mirror, check its MD5, resume partial downloads, unpack; fetch the published
train/val/test lists (--split torchgeo) beside the images, MD5-checked too.

    python -m eurosat.download [--variant ms|rgb] [--out data/eurosat]
The archive is kept in --downloads; put it there (and the lists into --out) by hand on a machine without internet access.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from eurosat.cli import ArgumentParser, run_cli
from eurosat.errors import UserError
from eurosat.sample import MARKER as SAMPLE_MARKER
from eurosat.split import SPLIT_LISTS

MIRROR = "https://hf.co/datasets/torchgeo/eurosat/resolve"
REVISION = "1ce6f1bfb56db63fd91b6ecc466ea67f2509774c"  # the dataset repository's commit torchgeo pins


@dataclass(frozen=True)
class Archive:
    url: str
    md5: str

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[1]


ARCHIVES = {
    "ms": Archive(f"{MIRROR}/{REVISION}/EuroSATallBands.zip", "5ac12b3b2557aa56e1826e981e8e200e"),
    "rgb": Archive(f"{MIRROR}/main/EuroSAT.zip", "c8fa014336c82ac7804f0398fcb19387"),
}
CHUNK = 1 << 20


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        while block := handle.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, target: Path, timeout: float = 60) -> None:
    """Download url to target, continuing a `.part` file left by an interrupted download."""
    part = target.with_name(target.name + ".part")
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if done and response.status != 206:  # the server ignored the range: start over
                done = 0
            total = done + int(response.headers.get("Content-Length") or 0)
            with (
                open(part, "ab" if done else "wb") as out,
                tqdm(total=total or None, initial=done, unit="B", unit_scale=True, desc=target.name, file=sys.stderr) as bar,
            ):
                while block := response.read(CHUNK):
                    out.write(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and done:  # range past the end: the .part file is already complete
            part.replace(target)
            return
        raise UserError(f"downloading {url} failed: HTTP {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise UserError(
            f"cannot download {url} ({reason}): without internet access, copy {target.name} into {target.parent}"
        ) from None
    part.replace(target)


def download(variant: str, out: Path, downloads: Path, url: str | None = None, md5: str | None = None) -> Path:
    archive = ARCHIVES[variant]
    url, md5 = url or archive.url, md5 or archive.md5
    target = downloads / archive.filename
    downloads.mkdir(parents=True, exist_ok=True)
    if not (target.exists() and md5sum(target) == md5):
        fetch(url, target)
        actual = md5sum(target)
        if actual != md5:
            target.unlink()
            raise UserError(f"{target.name} has MD5 {actual}, expected {md5}: the download is corrupt, run again")
    if (out / SAMPLE_MARKER).exists():
        print(f"replacing the synthetic sample in {out}")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(target) as zipped:
        zipped.extractall(out)
    return out


def download_lists(out: Path, base_url: str, md5s: dict[str, str]) -> None:
    """eurosat-{train,val,test}.txt into out, each checked against its MD5 (a list already there and sound is kept)."""
    for part, (filename, _) in SPLIT_LISTS.items():
        target = out / filename
        if target.exists() and md5sum(target) == md5s[part]:
            continue
        fetch(f"{base_url}/{filename}", target)
        if (actual := md5sum(target)) != md5s[part]:
            target.unlink()
            raise UserError(f"{filename} has MD5 {actual}, expected {md5s[part]}: the download is corrupt, run again")


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variant", choices=sorted(ARCHIVES), default="ms", help="ms: 13-band TIFF (default), rgb: JPEG")
    parser.add_argument("--out", type=Path, default=Path("data/eurosat"), help="unpack here (default: %(default)s)")
    parser.add_argument("--downloads", type=Path, default=Path("data/downloads"), help="archive folder (default: %(default)s)")
    parser.add_argument("--url", help="another mirror of the same archive")
    parser.add_argument("--md5", help=argparse.SUPPRESS)  # tests serve their own archive
    parser.add_argument("--lists-url", default=f"{MIRROR}/{REVISION}", help=argparse.SUPPRESS)  # ... and their own lists
    parser.add_argument("--lists-md5", nargs=3, metavar=("TRAIN", "VAL", "TEST"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    out = download(args.variant, args.out, args.downloads, args.url, args.md5)
    published = {part: md5 for part, (_, md5) in SPLIT_LISTS.items()}
    md5s = dict(zip(SPLIT_LISTS, args.lists_md5, strict=True)) if args.lists_md5 else published
    download_lists(out, args.lists_url.rstrip("/"), md5s)
    print(f"EuroSAT ({args.variant}) is in {out}, with the published train/val/test lists (--split torchgeo)")


if __name__ == "__main__":
    run_cli(main)
