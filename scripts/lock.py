"""Compile, seal and check hashed lockfiles.

    python scripts/lock.py compile requirements.in requirements.lock
    python scripts/lock.py check requirements.in requirements.lock
    python scripts/lock.py check-images IMAGES_DIR   # the same for each image layer's lock (make lock-check)
    python scripts/lock.py seal LOCK...     # record the sha256 of each lock's own text in its header
    python scripts/lock.py verify LOCK...   # fail when a lock was edited after it was sealed (stdlib only)
    python scripts/lock.py cutoff LOCK...   # fail when a lock was solved with another LOCK_CUTOFF (stdlib only)
    python scripts/lock.py relock           # set LOCK_CUTOFF in images/versions.env to now (make relock)

The lock is universal (every platform and Python >= 3.11) and records the sha256 of its input, so `check`
knows, offline, when the input changed after the last compile and when a pin no longer satisfies it. An image
layer's lock records the same, plus (on the NGC root) the base's fingerprint and the versions the base has of the
requirements it already meets: `check-images` checks that each lock still satisfies its requirements.in, whatever
the package index serves today (what a re-solve today would change is `make lock-drift`'s report, never a failure). The
seal catches a hand-edited or corrupted lock (a changed hash or pin) before pip runs; pip's --require-hashes
then checks every downloaded file against the lock. Every solve ignores files uploaded after LOCK_CUTOFF
(images/versions.env) and starts from nothing (no earlier pin is preferred), so no later release enters a
re-solve; an index that changes its past still can change one (scripts/lock_drift.py reports it).
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from eurosat.manifest import read_env  # noqa: E402 (the standard library only, like this script)

VERSIONS_ENV = Path(__file__).resolve().parents[1] / "images" / "versions.env"
VERSIONS = read_env(VERSIONS_ENV)
PINNED_BY_VERSIONS = {"torch": "TORCH_VERSION", "torchvision": "TORCHVISION_VERSION"}

INPUT_HASH = re.compile(r"^# input sha256: ([0-9a-f]{64})$", re.M)
SEAL = re.compile(r"^# lock sha256: ([0-9a-f]{64})\n", re.M)
CUTOFF = re.compile(r"^# uploaded prior to: (\S+)$", re.M)
MET_BY_BASE = re.compile(r"^# met by the base: (.+)$", re.M)
BASE_FINGERPRINT = re.compile(r"^# base: python=\S+ platform=\S+ constraint=\S+ packages=sha256:[0-9a-f]{64}$", re.M)
PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)", re.M)


def input_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compile_lock(source: Path, lock: Path) -> None:
    uv = Path(sys.executable).with_name("uv")
    fresh = lock.with_name(lock.name + ".new")  # uv prefers the pins of an existing output: solve from nothing
    fresh.unlink(missing_ok=True)
    command = [
        str(uv),
        "pip",
        "compile",
        str(source),
        "--universal",
        "--python-version",
        VERSIONS["LOCK_PYTHON"],
        "--generate-hashes",
        "--exclude-newer",
        VERSIONS["LOCK_CUTOFF"],
        "--quiet",
        "--custom-compile-command",
        f"make lock  # {source} -> {lock}",
        "-o",
        str(fresh),
    ]
    subprocess.run(command, check=True)
    header = f"# input sha256: {input_hash(source)}\n# uploaded prior to: {VERSIONS['LOCK_CUTOFF']}\n"
    fresh.write_text(header + fresh.read_text())
    seal(fresh)
    fresh.replace(lock)


def _sealed_body(text: str) -> str:
    return SEAL.sub("", text, count=1)


def seal(lock: Path) -> None:
    body = _sealed_body(lock.read_text())
    lock.write_text(f"# lock sha256: {hashlib.sha256(body.encode()).hexdigest()}\n{body}")


def verify(lock: Path) -> str | None:
    """The problem with the lock's seal, or None."""
    try:
        text = lock.read_text()
    except OSError as exc:
        return f"cannot read {lock} ({exc.strerror})"
    recorded = SEAL.search(text)
    if not recorded:
        return f"{lock} has no '# lock sha256:' seal: regenerate it (make lock / make lock-images)"
    if recorded.group(1) != hashlib.sha256(_sealed_body(text).encode()).hexdigest():
        return (
            f"{lock} was changed after it was generated (its sealed sha256 no longer matches; a pin or hash was edited): "
            f"restore it (git checkout -- {lock}) or regenerate it (make lock / make lock-images)"
        )
    return None


def cutoff_problem(lock: Path) -> str | None:
    """A lock solved with another cutoff than images/versions.env's LOCK_CUTOFF, or None."""
    recorded = CUTOFF.search(lock.read_text())
    if recorded and recorded.group(1) == VERSIONS["LOCK_CUTOFF"]:
        return None
    solved = f"was solved with uploads prior to {recorded.group(1)}" if recorded else "records no '# uploaded prior to:'"
    return f"{lock} {solved}, images/versions.env has LOCK_CUTOFF={VERSIONS['LOCK_CUTOFF']}"


def relock_cutoff(now: datetime) -> str:
    """Set LOCK_CUTOFF in images/versions.env to `now` (UTC, whole seconds); the new value."""
    cutoff = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = VERSIONS_ENV.read_text()
    VERSIONS_ENV.write_text(re.sub(r"^LOCK_CUTOFF=.*$", f"LOCK_CUTOFF={cutoff}", text, count=1, flags=re.M))
    return cutoff


def versions_problems(source: Path, requirement) -> list[str]:
    """torch and torchvision are pinned to images/versions.env's versions wherever a requirements.in names them."""
    key = PINNED_BY_VERSIONS.get(requirement.name.lower())
    if key and str(requirement.specifier) != f"=={VERSIONS[key]}":
        return [f"{source} asks for {requirement}, images/versions.env has {key}={VERSIONS[key]}"]
    return []


def check_lock(source: Path, lock: Path, on_base: bool = False) -> list[str]:
    """What no longer holds between `source` and its lock; `on_base`: a layer solved inside the NGC base, which pins
    only what the base lacks and records the base's versions of the rest."""
    from packaging.requirements import Requirement  # here, so that verify needs nothing outside the stdlib
    from packaging.utils import canonicalize_name

    try:
        text = lock.read_text()
    except OSError as exc:
        return [f"cannot read {lock} ({exc.strerror})"]
    problems = [problem for problem in (verify(lock), cutoff_problem(lock)) if problem]
    recorded = INPUT_HASH.search(text)
    if not recorded or recorded.group(1) != input_hash(source):
        problems.append(f"{source} changed since {lock} was solved")
    pins = {canonicalize_name(name): version for name, version in PIN.findall(text)}
    met = MET_BY_BASE.search(text)
    if on_base and not BASE_FINGERPRINT.search(text):
        problems.append(f"{lock} records no '# base:' fingerprint of the base it was solved in")
    if on_base and not met:
        problems.append(f"{lock} records no '# met by the base:' line")
    from_base = dict(pin.split("==", 1) for pin in met.group(1).split() if "==" in pin) if met else {}
    for line in source.read_text().splitlines():
        line = line.split("#")[0].strip()
        if not line:
            continue
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        pinned = pins.get(name) or from_base.get(name)
        where = f"{lock} pins" if name in pins else f"the base has (as {lock} records)"
        if pinned is None:
            nor = " nor met by the base" if on_base else ""
            problems.append(f"{requirement.name} is in {source} but not pinned in {lock}{nor}")
        elif not requirement.specifier.contains(pinned, prereleases=True):
            problems.append(f"{where} {requirement.name}=={pinned}, {source} asks for {requirement}")
        problems += versions_problems(source, requirement)
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = PIN.match(block)
        if match and "--hash=sha256:" not in block:
            problems.append(f"{match.group(1)} has no hash in {lock}")
    return problems


def check_images(images: Path) -> list[str]:
    """check_lock for every image layer in `images` (a folder of <layer>/requirements.in and requirements.lock)."""
    from eurosat.manifest import image_hierarchy

    hierarchy = image_hierarchy()
    problems = []
    for source in sorted(images.glob("*/requirements.in")):
        layer = source.parent.name
        problems += check_lock(source, source.with_suffix(".lock"), on_base=hierarchy.root(layer) == "NGC_BASE")
    return problems


def main() -> int:
    command, *paths = sys.argv[1:]
    if command == "compile":
        compile_lock(Path(paths[0]), Path(paths[1]))
        print(f"wrote {paths[1]}")
        return 0
    if command == "seal":
        for path in paths:
            seal(Path(path))
        return 0
    if command in ("verify", "cutoff"):
        check = verify if command == "verify" else cutoff_problem
        problems = [problem for path in paths if (problem := check(Path(path)))]
        for problem in problems:
            fix = "" if command == "verify" else ": re-solve it (make lock-images) or restore the LOCK_CUTOFF it has"
            print(f"error: {problem}{fix}", file=sys.stderr)
        return 1 if problems else 0
    if command == "relock":
        print(f"LOCK_CUTOFF={relock_cutoff(datetime.now(UTC))} in images/versions.env")
        return 0
    if command == "check-images":
        problems = check_images(Path(paths[0]))
        for problem in problems:
            print(f"error: {problem}: run `make lock-images`", file=sys.stderr)
        if not problems:
            print(f"every lock in {paths[0]} satisfies its requirements.in")
        return 1 if problems else 0
    source, lock = Path(paths[0]), Path(paths[1])
    problems = check_lock(source, lock)
    for problem in problems:
        print(f"error: {problem}: run `make lock`", file=sys.stderr)
    if not problems:
        print(f"{lock} matches {source}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
