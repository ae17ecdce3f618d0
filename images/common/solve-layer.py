#!/usr/bin/env python3
"""Solve one image layer's requirements inside the base it is built on; write the (unsealed) lock.

    solve-layer IN OUT LAYER CUTOFF SOLVER_PIP BASE_DESCRIPTION

pip resolves IN with the base's PIP_CONSTRAINT in force and every installed distribution as a constraint (the
base's own versions, pre-releases like NGC's torch included), for this Python and platform, ignoring every file
uploaded after CUTOFF. OUT gets only what the base lacks, one hashed file per package, headed by the base's
fingerprint, the cutoff, the sha256 of IN and the versions the base has of IN's requirements it already meets, so
that `scripts/lock.py check-images` can tell offline that the lock still satisfies IN. SOLVER_PIP is
`pip==<version> --hash=sha256:<hex>`: the base's own pip may predate --uploaded-prior-to, so that pip is downloaded
(hash-checked) and run from its wheel, never installed.
A failed solve is one line naming the layer and what conflicts, and exit 1. Runs in the base's own Python:
the standard library and the `packaging` that every pip vendors.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a base without packaging: pip always carries its own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name


def solver_pip(requirement: str, folder: Path) -> Path:
    """The solver pip's wheel, downloaded with its hash checked (without the base's constraints: they may pin pip)."""
    spec = folder / "solver-pip.txt"
    spec.write_text(requirement + "\n")
    env = {key: value for key, value in os.environ.items() if key != "PIP_CONSTRAINT"}
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--require-hashes", "-r", str(spec)]
    result = subprocess.run([*command, "-d", str(folder)], capture_output=True, text=True, env=env)
    wheels = sorted(folder.glob("pip-*.whl"))
    if result.returncode != 0 or not wheels:
        fail(f"cannot download the solver ({requirement.split()[0]}): {last_error(result.stderr)}")
    return wheels[0]


def last_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not line.startswith("WARNING")]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[-1].removeprefix("ERROR: ")


def conflict(stderr: str) -> str:
    """pip's reason for a failed resolve, in one line: the conflicting requirements, or its last error."""
    block = re.search(r"The conflict is caused by:\n(.*?)\n\n", stderr, re.S)
    if block:
        return "; ".join(line.strip() for line in block.group(1).splitlines() if line.strip())
    return last_error(stderr)


class SolveError(Exception):
    """What stops a solve, in one line."""


def fail(message: str) -> None:
    raise SolveError(message)


def via(items: list[dict], environment: dict) -> tuple[dict[str, list[str]], list[str]]:
    """For each package pip would install, the packages installed with it that require it. A package pulled in
    only through an extra of a base package's requirement (pytorch-lightning's fsspec[http]) gets that extra."""
    names = {canonicalize_name(item["metadata"]["name"]) for item in items}
    parents: dict[str, list[str]] = {name: [] for name in names}
    extras = []
    for item in items:
        parent = canonicalize_name(item["metadata"]["name"])
        for line in item["metadata"].get("requires_dist", []):
            requirement = Requirement(line)
            if requirement.marker and not requirement.marker.evaluate({**environment, "extra": ""}):
                continue
            wanted = canonicalize_name(requirement.name)
            if wanted in names:
                parents[wanted].append(parent)
            elif requirement.extras:
                extras.append(f"{parent} ({requirement.name}[{','.join(sorted(requirement.extras))}])")
    return parents, extras


def met_by_base(source: Path, items: list[dict], installed: dict[str, str]) -> list[str]:
    """`name==version` of each requirement of `source` that pip installs nothing for: the base's version of it."""
    pinned = {canonicalize_name(item["metadata"]["name"]) for item in items}
    names = {canonicalize_name(Requirement(line).name) for line in requirement_lines(source)}
    return [f"{name}=={installed[name]}" for name in sorted(names - pinned)]


def requirement_lines(source: Path) -> list[str]:
    return [line for line in (raw.split("#")[0].strip() for raw in source.read_text().splitlines()) if line]


def lock_text(layer: str, source: Path, report: dict, installed: dict[str, str], fingerprint: str, cutoff: str, base: str) -> str:
    items = sorted(report["install"], key=lambda item: canonicalize_name(item["metadata"]["name"]))
    parents, extras = via(items, report["environment"])
    lines = [
        f"# base: {fingerprint}",
        f"# input sha256: {hashlib.sha256(source.read_bytes()).hexdigest()}",
        f"# uploaded prior to: {cutoff}",
        f"# base image: {base}",
        f"# met by the base: {' '.join(met_by_base(source, items, installed)) or 'nothing'}",
        f"# Solved from images/{layer}/requirements.in inside that base (make lock-images), with its constraint file and",
        "# installed versions in force: only what the base lacks, one file per package for its Python and platform.",
    ]
    for item in items:
        name, version = canonicalize_name(item["metadata"]["name"]), item["metadata"]["version"]
        archive = item["download_info"].get("archive_info", {})
        digest = archive.get("hashes", {}).get("sha256") or archive.get("hash", "").partition("sha256=")[2]
        if not digest:
            fail(f"pip reported no sha256 for {name} {version} ({item['download_info'].get('url')})")
        sources = (["-r requirements.in"] if item.get("requested") else []) + sorted(parents[name])
        sources = sources or [f"an extra: {', '.join(extras)}"]
        lines += [f"{name}=={version} \\", f"    --hash=sha256:{digest}", f"    # via {', '.join(sources)}"]
    return "\n".join(lines) + "\n"


def solve(source: Path, out: Path, layer: str, cutoff: str, pip_requirement: str, base: str) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        wheel = solver_pip(pip_requirement, folder)
        installed = folder / "installed.txt"
        freeze = subprocess.run(["base-fingerprint", "freeze"], capture_output=True, text=True, check=True).stdout
        installed.write_text(freeze)
        report = folder / "report.json"
        command = [sys.executable, str(wheel / "pip"), "install", "--dry-run", "--only-binary=:all:"]
        command += ["--uploaded-prior-to", cutoff, "--report", str(report), "-r", str(source), "-c", str(installed)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            fail(f"cannot be solved on this base: {conflict(result.stdout + result.stderr)}")  # pip explains on stdout
        fingerprint = subprocess.run(["base-fingerprint", "show"], capture_output=True, text=True, check=True).stdout.strip()
        versions = {canonicalize_name(name): version for name, version in (line.split("==", 1) for line in freeze.split())}
        out.write_text(lock_text(layer, source, json.loads(report.read_text()), versions, fingerprint, cutoff, base))


def main(argv: list[str]) -> int:
    if len(argv) != 6:
        print(__doc__, file=sys.stderr)
        return 2
    source, out, layer, cutoff, pip_requirement, base = argv
    try:
        solve(Path(source), Path(out), layer, cutoff, pip_requirement, base)
    except SolveError as error:
        print(f"error: images/{layer}/requirements.in: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
