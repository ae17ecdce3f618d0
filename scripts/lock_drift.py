"""What a re-solve today would change against the committed locks (make lock-drift); the tree is never touched.

    python scripts/lock_drift.py --ngc-base IMAGE [--images DIR] [--out DIR] [LAYER...]

Each lock (requirements.lock and every image layer's, or the LAYERs named) is solved again exactly as `make lock`
and `make lock-images` solve it, with the same LOCK_CUTOFF, into a scratch folder (or --out, to keep the
solves). Per lock it prints the pins a re-solve adds, removes and changes, and the versions whose files changed,
each new version with the upload time the index gives its locked files. The same cutoff can give another answer
when the index changed its past: a release yanked or deleted, a file listed with an earlier upload time than it
had. That is a report, exit 0; a lock that cannot be solved is one line and exit 1. To take the new solves, run
`make lock lock-images` and commit them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lock import compile_lock  # noqa: E402
from lock_images import REPO, LockError, lock_cuda_layer, lock_ngc_layers  # noqa: E402

from eurosat.manifest import image_hierarchy  # noqa: E402

BLOCK = re.compile(r"^([a-z0-9][a-z0-9._-]*)==([^\s;\\]+)(.*?)(?=^[a-z0-9]|\Z)", re.M | re.S)
INDEX = os.environ.get("UV_INDEX_URL") or os.environ.get("PIP_INDEX_URL") or "https://pypi.org/simple"


def locked_files(text: str) -> dict[str, dict[str, set[str]]]:
    """name -> version -> the sha256 of every file the lock allows for it (a universal lock may pin a name twice)."""
    pins: dict[str, dict[str, set[str]]] = {}
    for name, version, rest in BLOCK.findall(text):
        pins.setdefault(name, {}).setdefault(version, set()).update(re.findall(r"--hash=sha256:([0-9a-f]{64})", rest))
    return pins


def upload_time(name: str, hashes: set[str]) -> str:
    """The latest upload time the index lists for these files of `name`, or why it is not known."""
    request = urllib.request.Request(f"{INDEX.rstrip('/')}/{name}/", headers={"Accept": "application/vnd.pypi.simple.v1+json"})
    context = ssl.create_default_context(cafile=os.environ.get("PIP_CA") or os.environ.get("SSL_CERT_FILE"))
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            files = json.load(response)["files"]
    except (OSError, ValueError, KeyError) as error:
        return f"upload time unknown: {error}"
    times = [file.get("upload-time") for file in files if file.get("hashes", {}).get("sha256") in hashes]
    times = sorted(time for time in times if time)
    return f"uploaded {times[-1]}" if times else "upload time not listed"


def drift(before: dict[str, dict[str, set[str]]], after: dict[str, dict[str, set[str]]]) -> list[str]:
    """One line per pin a re-solve adds, removes or changes (version, or the files of the same version)."""
    lines = []
    for name in sorted(before.keys() | after.keys()):
        old, new = before.get(name, {}), after.get(name, {})
        if old == new:
            continue
        if not old:
            lines += [f"added {name} {version} ({upload_time(name, new[version])})" for version in sorted(new)]
        elif not new:
            lines += [f"removed {name} {' '.join(sorted(old))}"]
        elif old.keys() == new.keys():
            lines += [f"other files {name} {version} ({upload_time(name, new[version])})" for version in sorted(new)
                      if old[version] != new[version]]  # fmt: skip
        else:
            times = ", ".join(upload_time(name, new[version]) for version in sorted(new.keys() - old.keys()))
            lines += [f"changed {name} {' '.join(sorted(old))} -> {' '.join(sorted(new))} ({times})"]
    return lines


def solve_all(images: Path, layers: list[str], ngc_base: str, out: Path) -> list[tuple[str, Path, Path]]:
    """Solve the root lock and `layers` into `out`: (the lock's name, the committed lock, the fresh one)."""
    shutil.copy(REPO / "requirements.in", out / "requirements.in")
    compile_lock(out / "requirements.in", out / "requirements.lock")
    solved = [("requirements.lock", REPO / "requirements.lock", out / "requirements.lock")]
    shutil.copytree(images, out / "images", dirs_exist_ok=True)
    for layer in layers:
        (out / "images" / layer / "requirements.lock").unlink(missing_ok=True)  # solved from nothing
    hierarchy = image_hierarchy()
    for layer in layers:
        if hierarchy.root(layer) == "CUDA_BASE":
            lock_cuda_layer(layer, out / "images")
    ngc_layers = [layer for layer in layers if hierarchy.root(layer) == "NGC_BASE"]
    if ngc_layers:
        lock_ngc_layers(ngc_layers, ngc_base, out / "images")
    for layer in layers:
        solved.append((f"images/{layer}/requirements.lock", images / layer / "requirements.lock",
                       out / "images" / layer / "requirements.lock"))  # fmt: skip
    return solved


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layers", nargs="*", help="image layers in build order (default: every one)")
    parser.add_argument("--ngc-base", required=True, help="the NGC image (or its stand-in) the NGC layers are solved in")
    parser.add_argument("--images", type=Path, default=REPO / "images", help="the committed layers' folder")
    parser.add_argument("--out", type=Path, help="keep the fresh solves here (a folder, created)")
    args = parser.parse_args()
    layers = args.layers or list(image_hierarchy().order)
    unknown = [layer for layer in layers if not (args.images / layer / "requirements.in").is_file()]
    if unknown:
        print(f"error: no {args.images}/<layer>/requirements.in for {' '.join(unknown)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as scratch:
        out = args.out or Path(scratch)
        out.mkdir(parents=True, exist_ok=True)
        try:
            solved = solve_all(args.images, layers, args.ngc_base, out)
        except (LockError, subprocess.CalledProcessError) as error:
            print(f"error: a re-solve failed, so no drift can be reported: {error}", file=sys.stderr)
            return 1
        for name, committed, fresh in solved:
            before, after = locked_files(committed.read_text()), locked_files(fresh.read_text())
            lines = drift(before, after)
            summary = f"{len(lines)} difference(s) from a re-solve today" if lines else f"no drift ({len(after)} pins)"
            print(f"{name}: {summary}")
            for line in lines:
                print(f"  {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
