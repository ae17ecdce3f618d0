"""Compile and check a hashed lockfile.

    python scripts/lock.py compile requirements.in requirements.lock
    python scripts/lock.py check requirements.in requirements.lock

The lock is universal (every platform and Python >= 3.11) and records the sha256 of its input, so `check`
knows, offline, when the input changed after the last compile and when a pin no longer satisfies it.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

INPUT_HASH = re.compile(r"^# input sha256: ([0-9a-f]{64})$", re.M)
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", re.M)


def input_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compile_lock(source: Path, lock: Path) -> None:
    uv = Path(sys.executable).with_name("uv")
    command = [
        str(uv),
        "pip",
        "compile",
        str(source),
        "--universal",
        "--python-version",
        "3.11",
        "--generate-hashes",
        "--quiet",
        "--custom-compile-command",
        f"make lock  # {source} -> {lock}",
        "-o",
        str(lock),
    ]
    subprocess.run(command, check=True)
    lock.write_text(f"# input sha256: {input_hash(source)}\n" + lock.read_text())


def check_lock(source: Path, lock: Path) -> list[str]:
    text = lock.read_text()
    problems = []
    recorded = INPUT_HASH.search(text)
    if not recorded or recorded.group(1) != input_hash(source):
        problems.append(f"{source} changed since {lock} was compiled")
    pins = {canonicalize_name(name): version for name, version in PIN.findall(text)}
    for line in source.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        pinned = pins.get(canonicalize_name(requirement.name))
        if pinned is None:
            problems.append(f"{requirement.name} is in {source} but not pinned in {lock}")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{lock} pins {requirement.name}=={pinned}, {source} asks for {requirement}")
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = PIN.match(block)
        if match and "--hash=sha256:" not in block:
            problems.append(f"{match.group(1)} has no hash in {lock}")
    return problems


def main() -> int:
    command, source, lock = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    if command == "compile":
        compile_lock(source, lock)
        print(f"wrote {lock}")
        return 0
    problems = check_lock(source, lock)
    for problem in problems:
        print(f"error: {problem}: run `make lock`", file=sys.stderr)
    if not problems:
        print(f"{lock} matches {source}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
