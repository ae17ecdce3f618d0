#!/usr/bin/env python3
"""The fingerprint of the Python environment an image layer is installed into, and the checks around it.

    base-fingerprint show                      the fingerprint of this environment, one line
    base-fingerprint check LOCK NAME BASE      fail in one line unless LOCK (shown as NAME) was solved here
    base-fingerprint freeze                    every installed distribution, name==version, one a line
    base-fingerprint unchanged BEFORE          fail unless every distribution in BEFORE (a freeze) is unchanged

A fingerprint is what decides how a lock solves: the Python version and platform, the sha256 of the pip
constraint file in force (PIP_CONSTRAINT; NGC's /etc/pip/constraint.txt) and the sha256 of the installed
distributions. `make lock-images` writes it into each lock as a `# base:` line; the build checks it before pip
runs. Standard library only: it runs in whatever Python the base has.
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


def check(lock: Path, name: str, base: str) -> int:
    recorded = BASE_LINE.search(lock.read_text())
    here = fingerprint()
    if recorded and recorded.group(1) == here:
        print(f"{name}: solved against this base ({here})")
        return 0
    solved = recorded.group(1) if recorded else "no '# base:' line (a lock from before fingerprints)"
    print(
        f"error: {name} was solved against another base: lock has {solved}; {base} has {here}: "
        f"run 'make lock-images NGC_BASE={base}' to solve the locks against this base",
        file=sys.stderr,
    )
    return 1


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
    print(f"all {len(base)} packages of the base unchanged")
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
        return check(Path(args[0]), args[1], args[2])
    if command == "unchanged":
        return unchanged(Path(args[0]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
