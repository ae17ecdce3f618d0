"""Solve each image layer's hashed lock against the base it is built on (make lock-images), and re-solve a layer
whose lock was solved against another base before it is built (make image-<layer>).

    python scripts/lock_images.py --ngc-base IMAGE [--out DIR] LAYER...        (layers in build order)
    python scripts/lock_images.py --ngc-base IMAGE --build-on BASE [--locked] [--out DIR] LAYER

A layer on the CUDA root (images/hierarchy.env) is a virtual environment over a base without Python packages: a
universal lock (uv, every platform, Python >= LOCK_PYTHON of versions.env). A layer on the NGC root is solved
inside one throwaway container of the NGC base, in build order, by images/common/solve-layer.py: pip resolves the
layer's requirements.in with the base's PIP_CONSTRAINT in force and every installed distribution as a constraint,
for the base's Python and platform, ignoring uploads after LOCK_CUTOFF. The lock holds only what the base lacks
and records the base's fingerprint (images/common/base-fingerprint.py). The lock is then installed in that
container exactly as the image build does (images/common/install-layer.sh), so the next layer is solved against
it; a layer's lock in --out is replaced only after that install passed.

--build-on: before `make image-<layer>` builds on BASE, the lock's fingerprint is compared with BASE's. A lock solved
against another base is first proven on BASE, in a scratch container, the way the build installs it: every hash,
no package of the base moved, pip check adds nothing, every requirement of requirements.in met. Where it holds, the
build uses it (one line says which base it was solved on and what differs); where it fails, the layer is re-solved
inside BASE into --resolved (build/locks/<layer>/requirements.lock, reused while it fits), never over a tracked
file, with the command that adopts it, and the build uses a copy of the context holding that lock. With --locked
only a committed lock that holds is used. It prints the build context to use; what it did goes to stderr.
The host side needs docker and the standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lock import VERSIONS, input_hash, seal, versions_problems  # noqa: E402

from eurosat.manifest import image_hierarchy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DOCKER = os.environ.get("DOCKER", "docker")
WORK = "/lock"  # where the container sees the scratch folder
BASE_LINE = re.compile(r"^# base: (.+)$", re.M)
PIN = re.compile(r"^([a-z0-9-]+)==(\S+) ", re.M)


class LockError(Exception):
    """One line that says why a layer cannot be locked or built."""


def docker(*args: str) -> str:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True)
    if result.returncode != 0:
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        if errors:  # solve-layer's own one-line reason
            raise LockError(errors[-1].removeprefix("error: "))
        raise LockError(f"{DOCKER} {' '.join(args[:3])}... failed:\n{result.stdout[-2000:]}{result.stderr[-4000:]}")
    return result.stdout.strip()


def lock_cuda_layer(layer: str, out: Path) -> None:
    """On the plain-CUDA root: torch and torchvision in a venv, so a universal lock fits any Python of the base."""
    from packaging.requirements import Requirement  # make lock-images runs in the venv

    lock = out / layer / "requirements.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    uv = Path(sys.executable).with_name("uv")
    source = out / layer / "requirements.in"
    for line in filter(None, (line.split("#")[0].strip() for line in source.read_text().splitlines())):
        for problem in versions_problems(source, Requirement(line)):
            raise LockError(problem)
    fresh = lock.with_name(lock.name + ".new")  # solved from nothing: uv would prefer an existing output's pins
    fresh.unlink(missing_ok=True)
    command = [str(uv), "pip", "compile", str(source), "--universal", "--python-version", VERSIONS["LOCK_PYTHON"]]
    command += ["--generate-hashes", "--exclude-newer", VERSIONS["LOCK_CUTOFF"], "--quiet"]
    command += ["--custom-compile-command", "make lock-images", "-o", str(fresh)]
    subprocess.run(command, check=True)
    header = f"# input sha256: {input_hash(source)}\n# uploaded prior to: {VERSIONS['LOCK_CUTOFF']}\n"
    fresh.write_text(header + fresh.read_text())
    seal(fresh)
    fresh.replace(lock)
    print(f"locked {lock} (universal)")


class BaseContainer:
    """One throwaway container of a base that layers are solved and installed into, in order, with the image
    build's own scripts (images/common) on its PATH."""

    def __init__(self, image: str, scratch: Path):
        mounts = ["-v", f"{scratch}:{WORK}", "-v", "eurosat-pip-cache:/root/.cache/pip"]  # downloads kept for the next
        if os.environ.get("PIP_CA"):  # a TLS-intercepting network: pip needs its CA bundle
            mounts += ["-v", f"{os.environ['PIP_CA']}:/run/secrets/pip-ca:ro", "-e", "PIP_CERT=/run/secrets/pip-ca"]
        self.scratch = scratch
        self.id = docker("run", "-d", "--rm", "--user", "root", "--entrypoint", "sleep", *mounts, image, "infinity")
        for script in ("base-fingerprint.py", "install-layer.sh", "solve-layer.py"):
            docker("cp", str(REPO / "images" / "common" / script), f"{self.id}:/usr/local/bin/{script.rsplit('.', 1)[0]}")

    def run(self, *command: str) -> str:
        return docker("exec", self.id, *command)

    def solve(self, layer: str, source: Path, base: str) -> Path:
        """The layer's sealed lock, solved from `source` (its requirements.in) in this container as it is now."""
        (self.scratch / f"{layer}.in").write_bytes(source.read_bytes())
        candidate = self.scratch / f"{layer}.lock"
        self.run("solve-layer", f"{WORK}/{layer}.in", f"{WORK}/{layer}.lock", layer, VERSIONS["LOCK_CUTOFF"],
                 VERSIONS["SOLVER_PIP"], base)  # fmt: skip
        self.give_back()  # root wrote the lock: the host user seals it, copies it over the tracked one, removes it
        seal(candidate)
        return candidate

    def give_back(self) -> None:
        """What the container's root wrote in the scratch folder becomes the host user's, as if they had written it."""
        self.run("chown", "-R", f"{os.getuid()}:{os.getgid()}", WORK)

    def close(self) -> None:
        subprocess.run([DOCKER, "exec", self.id, "chown", "-R", f"{os.getuid()}:{os.getgid()}", WORK], capture_output=True)
        subprocess.run([DOCKER, "rm", "-f", self.id], capture_output=True)


@contextlib.contextmanager
def scratch_container(image: str):
    """A BaseContainer of `image` over an empty scratch folder, both removed afterwards."""
    with tempfile.TemporaryDirectory() as scratch_dir:
        scratch = Path(scratch_dir)
        os.chmod(scratch, 0o777)  # the container's root writes there too
        container = BaseContainer(image, scratch)
        try:
            yield container
        finally:
            container.close()


def describe_base(layer: str, ngc_base: str) -> str:
    """What a layer is built on, as its lock's header names it: the NGC base and the locks of the layers between."""
    below = image_hierarchy().lineage(layer)[1:]
    return " + ".join([ngc_base, *(f"images/{name}/requirements.lock" for name in reversed(below))])


def pins(lock: Path) -> dict[str, str]:
    return dict(PIN.findall(lock.read_text())) if lock.is_file() else {}


def lock_ngc_layers(layers: list[str], ngc_base: str, out: Path) -> None:
    with scratch_container(ngc_base) as container:
        for layer in layers:
            candidate = container.solve(layer, out / layer / "requirements.in", describe_base(layer, ngc_base))
            # installed as the build installs it; the committed lock is replaced only once that worked
            container.run("install-layer", f"{WORK}/{layer}.lock", f"images/{layer}/requirements.lock")
            lock = out / layer / "requirements.lock"
            lock.parent.mkdir(parents=True, exist_ok=True)
            lock.write_bytes(candidate.read_bytes())
            print(f"locked {lock}: {len(pins(lock))} packages the base lacks")


def fingerprint(image: str) -> str:
    """The base fingerprint of an image, computed by its own Python as the build computes it."""
    script = (REPO / "images" / "common" / "base-fingerprint.py").read_text()
    result = subprocess.run([DOCKER, "run", "--rm", "-i", "--user", "root", "--entrypoint", "python3", image, "-", "show"],
                            input=script, capture_output=True, text=True)  # fmt: skip
    if result.returncode != 0:  # the engine's last word says why (no such image, no registry, no Python)
        said = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("See '")]
        raise LockError(f"cannot read the Python environment of {image}: {(said or ['no output'])[-1].strip()[-300:]}")
    return result.stdout.strip()


def changes(before: dict[str, str], after: dict[str, str]) -> str:
    """What a re-solve changed against the lock it replaces, in one line."""
    added = [f"{name} {after[name]}" for name in sorted(after.keys() - before.keys())]
    removed = [f"{name} {before[name]}" for name in sorted(before.keys() - after.keys())]
    moved = [
        f"{name} {before[name]} -> {after[name]}" for name in sorted(before.keys() & after.keys()) if before[name] != after[name]
    ]
    parts = [f"{len(items)} {what}" + (f" ({', '.join(items)})" if items else "")
             for what, items in (("added", added), ("removed", removed), ("changed", moved))]  # fmt: skip
    return ", ".join(parts)


def say(line: str) -> None:
    print(line, file=sys.stderr)  # stdout names the build context


def differences(recorded: str, here: str) -> str:
    """Which parts of two fingerprints differ, in words."""
    words = {"python": "Python version", "constraint": "constraint file", "packages": "installed packages"}
    old, new = (dict(part.split("=", 1) for part in line.split()) for line in (recorded, here))
    differing = [words.get(key, key) for key in new if old.get(key) != new[key]]
    verb = "differs" if len(differing) == 1 else "differ"
    return f"its {' and '.join(differing)} {verb}" if differing else "the same fingerprint"


class Proofs:
    """What proving a lock on a base found, kept in --resolved so that the next build does not prove it again."""

    def __init__(self, folder: Path):
        self.path = folder / "proofs.tsv"

    @staticmethod
    def key(layer: str, out: Path, here: str) -> str:
        files = [out / layer / "requirements.lock", out / layer / "requirements.in"]
        return hashlib.sha256(b"".join(path.read_bytes() for path in files) + here.encode()).hexdigest()

    def get(self, key: str) -> str | None:
        lines = self.path.read_text().splitlines() if self.path.is_file() else []
        found = [line.split("\t", 1)[1] for line in lines if line.startswith(key + "\t")]
        return found[-1] if found else None

    def record(self, key: str, outcome: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as proofs:
            proofs.write(f"{key}\t{outcome}\n")


def prove(layer: str, out: Path, base: str) -> str:
    """'holds', or why the committed lock does not hold on `base`: installed there as the build installs it."""
    with scratch_container(base) as container:
        for suffix in ("lock", "in"):
            (container.scratch / f"{layer}.{suffix}").write_bytes((out / layer / f"requirements.{suffix}").read_bytes())
        try:
            container.run("install-layer", f"{WORK}/{layer}.lock", f"images/{layer}/requirements.lock")
            container.run("base-fingerprint", "meets", f"{WORK}/{layer}.in", f"images/{layer}/requirements.in")
        except LockError as error:
            return str(error).splitlines()[0]
    return "holds"


def fits(lock: Path, here: str, source: Path) -> bool:
    """A lock in --resolved still fits: solved against this base, from today's requirements.in."""
    text = lock.read_text() if lock.is_file() else ""
    recorded = BASE_LINE.search(text)
    return bool(recorded and recorded.group(1) == here and f"# input sha256: {input_hash(source)}\n" in text)


def parent_from_committed_locks(layer: str, base: str, out: Path) -> None:
    """LOCKED=1: a parent image (one of ours) must have been built from the committed lock of every layer below: a
    parent built from a lock re-solved into build/locks is not what the tree describes, whatever holds on it."""
    found = subprocess.run([DOCKER, "image", "inspect", "--format", "{{json .Config.Labels}}", base], capture_output=True,
                           text=True)  # fmt: skip
    labels = (json.loads(found.stdout) if found.returncode == 0 else None) or {}
    for below in image_hierarchy().lineage(layer)[1:]:
        recorded = labels.get(f"io.github.eurosat.lock.{below}.sha256")
        committed = hashlib.sha256((out / below / "requirements.lock").read_bytes()).hexdigest()
        if recorded and recorded != committed:
            raise LockError(
                f"{base} was built from another images/{below}/requirements.lock than the committed one (a re-solve): "
                f"LOCKED=1 builds only on committed locks: rebuild it with 'make image-{below} LOCKED=1', or build "
                "without LOCKED=1"
            )


def build_on(layer: str, base: str, ngc_base: str, out: Path, resolved: Path, locked: bool) -> Path:
    """The build context for the layer on `base`: `out` when its lock is solved against `base` or holds there, else
    a copy of `out` with the lock re-solved inside `base` (kept in `resolved`)."""
    lock = out / layer / "requirements.lock"
    name = f"images/{layer}/requirements.lock"
    text = lock.read_text() if lock.is_file() else ""
    recorded = BASE_LINE.search(text)
    if locked:
        parent_from_committed_locks(layer, base, out)
    here = fingerprint(base)
    if recorded and recorded.group(1) == here:
        say(f"{name}: solved against this base")
        return out
    solved_on = re.search(r"^# base image: (\S+)", text, re.M)
    solved_on = solved_on.group(1) if solved_on else "another base"
    proofs = Proofs(resolved)
    key = Proofs.key(layer, out, here)
    outcome = proofs.get(key)
    if outcome is None:
        say(f"{name} was solved on {solved_on}; proving it on {base}")
        outcome = prove(layer, out, base)
        if outcome == "holds":  # only a proof that held is kept: a failure may be the network's, and is tried again
            proofs.record(key, outcome)
    if outcome == "holds":
        differ = differences(recorded.group(1), here) if recorded else "no '# base:' line in the lock"
        say(f"{name}: solved on {solved_on}, built on {base} ({differ}), where it holds: every hash, no package of "
            "the base moved, pip check adds nothing, requirements.in met")  # fmt: skip
        return out
    if locked:
        raise LockError(
            f"{name} does not hold on {base}: {outcome}; LOCKED=1 builds only from committed locks: build without "
            f"LOCKED=1 to re-solve it into {resolved}, or run 'make lock-images NGC_BASE={ngc_base}'"
        )
    fresh = resolved / layer / "requirements.lock"
    shown = fresh.relative_to(Path.cwd()) if fresh.is_relative_to(Path.cwd()) else fresh  # build/locks/..., as typed
    if fits(fresh, here, out / layer / "requirements.in"):
        say(f"{name} does not hold on {base} ({outcome}); building from {shown}, re-solved for it earlier")
    else:
        say(f"{name} does not hold on {base} ({outcome}); re-solving it there into {shown}")
        with scratch_container(base) as container:
            candidate = container.solve(layer, out / layer / "requirements.in", describe_base(layer, ngc_base))
            fresh.parent.mkdir(parents=True, exist_ok=True)
            fresh.write_bytes(candidate.read_bytes())
        after = pins(fresh)
        say(f"re-solved {name} into {shown}: {len(after)} packages the base lacks; against the committed lock: "
            f"{changes(pins(lock), after)}")  # fmt: skip
        say(f"adopt it: cp {shown} {name} && git add {name} && git commit -m '{layer}: lock re-solved for {ngc_base}'")
    context = resolved / "context" / layer
    shutil.rmtree(context, ignore_errors=True)
    shutil.copytree(out, context)
    shutil.copyfile(fresh, context / layer / "requirements.lock")
    return context


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("layers", nargs="+", help="image names in build order")
    parser.add_argument("--ngc-base", required=True, help="the NGC image (or its stand-in) the layers are built on")
    parser.add_argument("--out", type=Path, default=REPO / "images", help="the folder of <layer>/requirements.in and .lock")
    parser.add_argument("--build-on", metavar="IMAGE", help="print the build context for LAYER on IMAGE (see above)")
    parser.add_argument("--resolved", type=Path, default=REPO / "build" / "locks", help="with --build-on: re-solved locks")
    parser.add_argument("--locked", action="store_true", help="with --build-on: only a committed lock that holds")
    args = parser.parse_args()
    unknown = [layer for layer in args.layers if not (args.out / layer / "requirements.in").is_file()]
    if unknown:
        known = sorted(path.parent.name for path in args.out.glob("*/requirements.in"))
        sys.exit(f"error: no images/<layer>/requirements.in for {' '.join(unknown)}: LOCK_LAYERS takes {' '.join(known)}")
    hierarchy = image_hierarchy()
    try:
        if args.build_on:
            (layer,) = args.layers
            context = args.out  # a universal lock (CUDA root) fits any base
            if hierarchy.root(layer) == "NGC_BASE":
                context = build_on(layer, args.build_on, args.ngc_base, args.out, args.resolved.resolve(), args.locked)
            print(context.resolve())
            return 0
        for layer in args.layers:
            if hierarchy.root(layer) == "CUDA_BASE":
                lock_cuda_layer(layer, args.out)
        lock_ngc_layers([layer for layer in args.layers if hierarchy.root(layer) == "NGC_BASE"], args.ngc_base, args.out)
    except LockError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
