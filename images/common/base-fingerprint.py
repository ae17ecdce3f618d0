#!/usr/bin/env python3
"""The fingerprint of the Python environment an image layer is installed into, and the checks around it.

    base-fingerprint show                      the fingerprint of this environment, one line
    base-fingerprint check LOCK NAME           say whether LOCK (shown as NAME) was solved here or on another base
    base-fingerprint freeze                    every installed distribution, name==version, one a line
    base-fingerprint unchanged BEFORE          fail unless every distribution in BEFORE (a freeze) is unchanged and
                                               no other distribution installed a file one of them installed
    base-fingerprint meets IN NAME             fail unless every requirement of IN (shown as NAME) is installed

A fingerprint is what decides how a lock solves: the Python version and platform, the sha256 of the pip
constraint file in force (PIP_CONSTRAINT; NGC's /etc/pip/constraint.txt) and the sha256 of the installed
distributions. `make lock-images` writes it into each lock as a `# base:` line. A lock solved on another base is
installed only where it holds (install-layer: every hash, no package of the base moved, pip check adds nothing).
Standard library only (and the `packaging` every pip vendors): it runs in whatever Python the base has.
"""

import hashlib
import os
import re
import sys
import sysconfig
from importlib.metadata import distributions
from pathlib import Path

BASE_LINE = re.compile(r"^# base: (.+)$", re.M)


def freeze() -> list[str]:
    """Installed distributions as sorted `name==version`, names normalised (PEP 503), first on sys.path wins."""
    found: dict[str, str] = {}
    for dist in distributions():
        name = dist.metadata["Name"]
        if name:
            found.setdefault(re.sub(r"[-_.]+", "-", name).lower(), dist.version)
    return [f"{name}=={version}" for name, version in sorted(found.items())]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def fingerprint() -> str:
    constraint = os.environ.get("PIP_CONSTRAINT", "")
    constraint_hash = sha256(Path(constraint).read_bytes()) if constraint and Path(constraint).is_file() else "none"
    packages = sha256("\n".join(freeze()).encode())
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return f"python={python} platform={sysconfig.get_platform()} constraint={constraint_hash} packages={packages}"


def check(lock: Path, name: str) -> int:
    recorded = BASE_LINE.search(lock.read_text())
    here = fingerprint()
    if recorded and recorded.group(1) == here:
        print(f"{name}: solved against this base ({here})")
    else:
        solved = recorded.group(1) if recorded else "no '# base:' line"
        print(f"{name}: solved against another base ({solved}), not this one ({here}): installed only if it holds here")
    return 0


def meets(source: Path, name: str) -> int:
    """Every requirement of a requirements.in installed at a version it allows: what a lock solved on another base
    may leave unmet (a package that base had and this one lacks), and pip check does not see."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a base without packaging: pip always carries its own copy
        from pip._vendor.packaging.requirements import Requirement
    installed = dict(line.split("==", 1) for line in freeze())
    unmet = []
    for line in source.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        requirement = Requirement(line)
        if requirement.marker and not requirement.marker.evaluate():
            continue
        version = installed.get(re.sub(r"[-_.]+", "-", requirement.name).lower())
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            unmet.append(f"{requirement} ({'not installed' if version is None else version})")
    if unmet:
        print(f"error: {name} is not met here: {', '.join(unmet)}", file=sys.stderr)
        return 1
    print(f"{name}: every requirement met")
    return 0


def installed_files() -> dict[str, set[str]]:
    """Each distribution's files, as its RECORD lists them, by absolute path."""
    files: dict[str, set[str]] = {}
    for dist in distributions():
        name = re.sub(r"[-_.]+", "-", dist.metadata["Name"] or "").lower()
        paths = {os.path.normpath(str(dist.locate_file(path))) for path in dist.files or []}
        files.setdefault(name, set()).update(paths)
    return files


def overwritten(base_names: set[str]) -> list[str]:
    """Files of the base's distributions that a distribution of the layer installed too, under another name (PyPI's
    triton over NGC's pytorch-triton): pip sees two packages, the base's version unchanged, and its files replaced."""
    files = installed_files()
    owners = {path: name for name in base_names & files.keys() for path in files[name]}
    found = []
    for name in sorted(files.keys() - base_names):
        shared = sorted(path for path in files[name] if path in owners)
        if shared:
            found.append(f"{name} overwrites {len(shared)} file(s) of {owners[shared[0]]} (e.g. {shared[0]})")
    return found


def unchanged(before: Path) -> int:
    now = dict(line.split("==", 1) for line in freeze())
    base = before.read_text().split()
    changed = []
    for line in base:
        name, version = line.split("==", 1)
        if now.get(name) != version:
            changed.append(f"{name} {version} -> {now.get(name, 'removed')}")
    if changed:
        print(f"error: this layer changed packages of its base: {', '.join(changed)}", file=sys.stderr)
        return 1
    overlaps = overwritten({line.split("==", 1)[0] for line in base})
    if overlaps:
        print(f"error: this layer overwrote files of its base: {'; '.join(overlaps)}", file=sys.stderr)
        return 1
    print(f"all {len(base)} packages of the base unchanged, none of their files overwritten")
    return 0


def main(argv: list[str]) -> int:
    command, *args = argv
    if command == "show":
        print(fingerprint())
        return 0
    if command == "freeze":
        print("\n".join(freeze()))
        return 0
    if command == "check":
        return check(Path(args[0]), args[1])
    if command == "meets":
        return meets(Path(args[0]), args[1])
    if command == "unchanged":
        return unchanged(Path(args[0]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
