"""Helpers for the tests against a real Docker engine (make test-images)."""

import fcntl
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from helpers import REPO, free_port

from eurosat.manifest import image_hierarchy

DOCKER = os.environ.get("DOCKER", "docker")
HIERARCHY = image_hierarchy()  # images/hierarchy.env: the images in build order, each one's parent
IMAGES = HIERARCHY.order
STANDIN_CUDA = "eurosat/standin-cuda:bookworm"
STANDIN_NGC = "eurosat/standin-ngc:25.10"
STANDIN_NGC_RESTRICTED = f"{STANDIN_NGC}-restricted"  # the same packages, a constraint file pinning numba and llvmlite
STANDINS = {"CUDA_BASE": STANDIN_CUDA, "NGC_BASE": STANDIN_NGC}  # what each root base is here


def parent_image(image: str) -> str:
    """The image `image` is built FROM on this machine."""
    parent = HIERARCHY.parents[image]
    return f"eurosat/{parent}:latest" if parent in IMAGES else STANDINS[parent]


def make_settings() -> list[str]:
    """make variables for this machine: the stand-in bases (no registry here) and the engine's limits."""
    settings = [f"DOCKER={DOCKER}", *(f"{root}={standin}" for root, standin in STANDINS.items())]
    for name in ("PIP_CA", "MEMLOCK_LIMIT"):
        if os.environ.get(name):
            settings.append(f"{name}={os.environ[name]}")
    return settings


def make(*args, check=True, timeout=1800, env=None) -> subprocess.CompletedProcess:
    result = subprocess.run(["make", *args, *make_settings()], cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(
            f"make {' '.join(args)} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def write_dotenv(root: Path, *port_settings: str) -> dict[str, int]:
    """root/.env as .env.example, with a free port for each named setting (make notebook, make mlflow): the ports."""
    ports = {key: free_port() for key in port_settings}
    text = (root / ".env.example").read_text()
    for key, port in ports.items():
        text = re.sub(rf"^{key}=.*$", f"{key}={port}", text, flags=re.M)
    (root / ".env").write_text(text)
    return ports


def docker(*args, check=True, timeout=600) -> subprocess.CompletedProcess:
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}\n{result.stderr[-3000:]}")
    return result


def remove_tags(pattern: str) -> None:
    """Untag every image whose name matches `pattern` (e.g. "eurosat-stale/*"): what a test built under names of its own.
    The engine keeps an image another tag still names."""
    tags = docker("images", "--format", "{{.Repository}}:{{.Tag}}", pattern).stdout.split()
    if tags:
        docker("rmi", *tags)


def image_id(name: str) -> str:
    return docker("image", "inspect", "--format", "{{.Id}}", f"eurosat/{name}:latest").stdout.strip()


def build_all() -> dict:
    """Stand-in root bases (no registry here), then every image through `make images`, timed. One pytest-xdist
    worker at a time: the others then find everything built (the stand-ins' work folder is a fixed path)."""
    if subprocess.run([DOCKER, "info"], capture_output=True).returncode != 0:
        raise AssertionError(f"no Docker engine answers '{DOCKER} info': start dockerd (see .ci/run)")
    with open(Path(tempfile.gettempdir()) / "eurosat-image-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.geteuid() == 0:
            subprocess.run(["bash", "scripts/standin-bases.sh"], cwd=REPO, check=True, env={**os.environ, "DOCKER": DOCKER})
        else:  # debootstrap needs root: make test-images as root builds them, then runs these tests as a user
            missing = [base for base in (*STANDINS.values(), STANDIN_NGC_RESTRICTED)
                       if subprocess.run([DOCKER, "image", "inspect", base], capture_output=True).returncode]  # fmt: skip
            if missing:
                raise AssertionError(f"the stand-in bases {missing} are not built: run 'bash scripts/standin-bases.sh' as "
                                     "root once (debootstrap needs root), or make test-images as root")  # fmt: skip
        start = time.perf_counter()
        make("images")
        seconds = time.perf_counter() - start
    print(f"\nmake images: {seconds:.0f} s")
    return {"seconds": seconds, "ids": {name: image_id(name) for name in IMAGES}}
