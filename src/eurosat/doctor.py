"""`make doctor`: can this host, its engine and the training image run PROJECT, on its GPUs when it has some?

One table (check, status, found, needed, how to fix) and exit status 1 when something blocks `make train`.
Host facts come from docker, compose, nvidia-smi and the disk; the image's facts from `python3 -m eurosat.gpu`
run in the project's image through scripts/compose.sh (so with the container's real GPUs, shm and memlock).
Every decision is a pure function of those facts: the tests feed it outputs recorded on real hosts.
The standard library only: make runs this file before any virtual environment exists.

    python3 src/eurosat/doctor.py            # the table (make doctor passes the settings below as variables)
    python3 src/eurosat/doctor.py exposure   # "nvidia", "cdi" or nothing: how compose gets the engine's GPUs
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

if __name__ == "__main__":  # run as a script by make: the package is not installed yet
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from eurosat import gpu, manifest  # noqa: E402
from eurosat.errors import UserError  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
DRIVERS = REPO_ROOT / "images" / "drivers.toml"
NVIDIA_SMI_QUERY = "index,name,driver_version,compute_cap,memory.total"
CDI_SPEC_DIRS = ("/etc/cdi", "/var/run/cdi")  # the CDI specification's defaults
DATA_CENTER_MARKERS = ("GeForce", "TITAN", "Quadro", "RTX", "Laptop")  # names of GPUs that are not data-center
MIN_SHM = 1 << 30
MEMLOCK_FIX = "set MEMLOCK_LIMIT (bytes, in .env or on the make line) to what the engine allows, e.g. Docker in a container"
TOOLKIT = "install the NVIDIA Container Toolkit, then `nvidia-ctk runtime configure --runtime=docker` (or CDI:"
TOOLKIT += " `nvidia-ctk cdi generate --output=/etc/cdi/nvidia.yaml`) and restart the engine"


@dataclass(frozen=True)
class Row:
    check: str
    status: str  # ok, warn, FAIL (blocks make train), skip
    found: str
    needed: str = ""
    fix: str = ""


# --- parsing what the tools print --------------------------------------------------------------------


def parse_nvidia_smi(text: str) -> list[dict[str, str]]:
    """`nvidia-smi --query-gpu=... --format=csv` (with its header, so any column order reads)."""
    rows = list(csv.reader(text.strip().splitlines(), skipinitialspace=True))
    if not rows:
        return []
    header = [name.split(" [")[0].strip() for name in rows[0]]
    return [dict(zip(header, (value.strip() for value in row), strict=False)) for row in rows[1:] if row]


def parse_engine_info(text: str) -> dict | None:
    """`docker info --format '{{json .}}'` (or Podman's `podman info`), reduced to what the checks read; None when
    no engine answered (a 20.10 client, Debian's, then exits 0 with only ServerErrors and its client's info)."""
    info = json.loads(text)
    if info.get("ServerErrors") and "ServerVersion" not in info:
        return None
    if "host" in info and "version" in info:  # Podman: CDI is built in and reads the default directories
        return {
            "engine": "podman",
            "version": info["version"].get("Version", "?"),
            "runtimes": [],
            "cdi_spec_dirs": list(CDI_SPEC_DIRS),
            "cdi_devices": [],
            "root_dir": info.get("store", {}).get("graphRoot"),
        }
    return {
        "engine": "docker",
        "version": info.get("ServerVersion", "?"),
        "runtimes": sorted(info.get("Runtimes") or {}),
        # Docker 25+ lists CDISpecDirs when CDI is enabled (on by default from 28.2), 28.2+ also its devices
        "cdi_spec_dirs": info.get("CDISpecDirs") or [],
        "cdi_devices": [device["ID"] for device in info.get("DiscoveredDevices") or [] if device.get("Source") == "cdi"],
        "root_dir": info.get("DockerRootDir"),
    }


def gpu_exposure(engine: dict, nvidia_cdi_specs: list[str]) -> str | None:
    """How the engine hands containers NVIDIA GPUs: its `nvidia` runtime, CDI devices nvidia.com/gpu, or not."""
    if "nvidia" in engine["runtimes"]:
        return "nvidia"
    if any(device.startswith("nvidia.com/gpu=") for device in engine["cdi_devices"]):
        return "cdi"
    if engine["cdi_spec_dirs"] and not engine["cdi_devices"] and nvidia_cdi_specs:
        return "cdi"  # engines that do not list CDI devices: the spec files in its directories say
    return None


def nvidia_cdi_specs(spec_dirs: list[str]) -> list[str]:
    """CDI spec files for kind nvidia.com/gpu in the engine's spec directories (readable on this host)."""
    found = []
    for directory in spec_dirs:
        for path in sorted(Path(directory).glob("*")) if Path(directory).is_dir() else []:
            try:
                if "nvidia.com/gpu" in path.read_text(errors="replace"):
                    found.append(str(path))
            except OSError:
                continue
    return found


# --- decisions -----------------------------------------------------------------------------------------


def data_center(name: str) -> bool:
    return not any(marker.lower() in name.lower() for marker in DATA_CENTER_MARKERS)


def driver_row(gpus: list[dict[str, str]], cuda: str | None, table: dict) -> Row:
    """The host's driver against the oldest one the image's CUDA runs on."""
    driver = gpus[0].get("driver_version", "?")
    found = f"{driver} ({', '.join(sorted({g.get('name', '?') for g in gpus}))})"
    if cuda is None:
        return Row(
            "NVIDIA driver", "warn", found, "unknown: the image's CUDA is not known", f"add its root base to {DRIVERS.name}"
        )
    rule = table.get("cuda", {}).get(".".join(cuda.split(".")[:2]))
    if rule is None:
        return Row("NVIDIA driver", "warn", found, f"CUDA {cuda}: no row", f"add CUDA {cuda} to images/{DRIVERS.name}")
    branch = int(driver.split(".")[0]) if driver.split(".")[0].isdigit() else 0
    needed = f"{rule['minimum_branch']} or newer (CUDA {cuda})"
    if branch >= rule["minimum_branch"]:
        return Row("NVIDIA driver", "ok", found, needed)
    upgrade = f"install an NVIDIA driver of branch {rule['minimum_branch']} or newer, or use an image built on an older CUDA"
    if branch in rule.get("forward_compatible_branches", []):
        if all(data_center(g.get("name", "")) for g in gpus):
            return Row("NVIDIA driver", "warn", found, needed, f"runs through CUDA forward compatibility (R{branch}); {upgrade}")
        return Row(
            "NVIDIA driver", "FAIL", found, needed, f"forward compatibility (R{branch}) is for data-center GPUs only; {upgrade}"
        )
    return Row("NVIDIA driver", "FAIL", found, needed, upgrade)


def buildkit_row(client_version: str | None, buildx: str | None) -> Row:
    """make builds with DOCKER_BUILDKIT=1: a client before 23.0 has BuildKit built in, later ones need buildx."""
    if buildx:
        return Row("BuildKit", "ok", f"buildx {buildx}", "BuildKit (buildx, or a client before 23.0)")
    major = int(client_version.split(".")[0]) if client_version and client_version.split(".")[0].isdigit() else 0
    if client_version and major < 23:
        return Row("BuildKit", "ok", f"built into the {client_version} client", "BuildKit (buildx, or a client before 23.0)")
    return Row(
        "BuildKit",
        "FAIL",
        f"client {client_version or '?'} without buildx",
        "BuildKit (buildx, or a client before 23.0)",
        "install the buildx plugin (docker-buildx-plugin or docker-buildx), or point DOCKER= at a client that has it",
    )


def disk_row(free_gb: float | None, need_gb: int, root_dir: str | None, building: list[str]) -> Row:
    what = (
        f"{need_gb} GB ({', '.join(building)} to build or pull, and room for runs)"
        if building
        else f"{need_gb} GB (room for runs)"
    )
    if free_gb is None:
        return Row("Disk", "warn", f"unknown: {root_dir or 'the engine'} is not on this host", what)
    found = f"{free_gb:.0f} GB free in {root_dir}"
    if free_gb >= need_gb:
        return Row("Disk", "ok", found, what)
    return Row(
        "Disk", "FAIL" if building else "warn", found, what, "free space there (docker system prune, docker builder prune)"
    )


def image_rows(facts: dict, host_gpus: int) -> list[Row]:
    """The training image's (or venv's) own view: torch.cuda, the GPUs against its architectures, NCCL, shm, memlock."""
    rows = []
    if host_gpus and not facts.get("available"):
        cause = gpu.cuda_cause(facts, facts.get("evidence") or [f"the host's {host_gpus} NVIDIA GPUs"])
        rows.append(Row("torch.cuda", "FAIL", f"torch {facts['torch']}: not available", f"{host_gpus} GPU(s)", cause))
    elif facts.get("available"):
        names = ", ".join(f"{g['name']} ({g['capability']})" for g in facts["gpus"])
        rows.append(
            Row("torch.cuda", "ok", f"torch {facts['torch']}, CUDA {facts['cuda']}: {len(facts['gpus'])} GPU(s): {names}")
        )
        unsupported = gpu.unsupported_gpus(facts)
        status = "FAIL" if unsupported else "ok"
        found = ", ".join(unsupported) + " not supported" if unsupported else "every GPU supported"
        rows.append(
            Row(
                "GPU architecture",
                status,
                found,
                gpu.built_for(facts),
                "use an image whose torch supports it" if unsupported else "",
            )
        )
        rows.append(Row("NCCL", "ok", facts.get("nccl") or "?"))
    else:
        rows.append(Row("torch.cuda", "ok", f"torch {facts['torch']}: CPU (no GPU here)"))
    shm = facts.get("shm_bytes")
    shm_text = f"{shm / (1 << 30):.1f} GB" if shm else "unknown"
    shm_ok = shm is not None and shm >= MIN_SHM
    rows.append(
        Row(
            "/dev/shm",
            "ok" if shm_ok else "warn",
            shm_text,
            "1 GB or more",
            "" if shm_ok else "shm_size in compose (8gb) or ipc: host",
        )
    )
    memlock = facts.get("memlock_bytes")
    memlock_text = "unlimited" if memlock is None else f"{memlock // 1024} KiB"
    memlock_status = "ok" if memlock is None or not host_gpus else "warn"
    memlock_fix = "" if memlock_status == "ok" else "ulimits memlock -1 (unset MEMLOCK_LIMIT) so NCCL can pin memory"
    rows.append(Row("memlock", memlock_status, memlock_text, "unlimited for NCCL on GPUs", memlock_fix))
    return rows


def probe_failure_row(error: str) -> Row:
    """The image probe did not run: the engine's or the NVIDIA hook's words, with what they mean."""
    if "unsatisfied condition: cuda>=" in error:
        return Row(
            "training image",
            "FAIL",
            "the NVIDIA hook refused to start it",
            "a driver for the image's CUDA",
            f"update the driver ({error})",
        )
    if "error setting rlimit type 8" in error:  # RLIMIT_MEMLOCK: compose asks for unlimited memlock
        return Row("training image", "FAIL", "the engine may not raise memlock", "memlock: unlimited, or a limit", MEMLOCK_FIX)
    if "could not select device driver" in error:
        return Row("training image", "FAIL", "the engine has no GPU device driver", "the nvidia runtime or CDI", TOOLKIT)
    return Row("training image", "FAIL", "the probe did not run", "a container that starts", error)


def summary(rows: list[Row]) -> tuple[str, int]:
    blocking = [row.check for row in rows if row.status == "FAIL"]
    if blocking:
        return f"make doctor: {len(blocking)} problem(s) block `make train`: {', '.join(blocking)}", 1
    return "make doctor: nothing blocks `make train`", 0


def render(rows: list[Row]) -> str:
    table = [("check", "status", "found", "needed", "how to fix")] + [
        (r.check, r.status, r.found, r.needed or "-", r.fix or "-") for r in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(4)]
    return "\n".join(
        "  ".join([*(cell.ljust(width) for cell, width in zip(line[:4], widths, strict=True)), line[4]]).rstrip()
        for line in table
    )


# --- gathering the facts -----------------------------------------------------------------------------------


def run(*command: str, env: dict | None = None, timeout: int = 60) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)
    except (OSError, subprocess.TimeoutExpired):
        return None


def output(*command: str) -> str | None:
    result = run(*command)
    return result.stdout.strip() if result and result.returncode == 0 else None


def host_gpus() -> tuple[list[dict[str, str]], str | None]:
    """The host's GPUs from nvidia-smi, or why there are none."""
    if not shutil.which("nvidia-smi"):
        return [], ("NVIDIA device nodes but no nvidia-smi" if gpu.device_nodes() else None)
    for query in (NVIDIA_SMI_QUERY, NVIDIA_SMI_QUERY.replace(",compute_cap", "")):  # old drivers lack compute_cap
        result = run("nvidia-smi", f"--query-gpu={query}", "--format=csv")
        if result and result.returncode == 0:
            return parse_nvidia_smi(result.stdout), None
    return [], f"nvidia-smi failed: {(result.stdout + result.stderr).strip().splitlines()[-1:] if result else 'timed out'}"


def read_drivers(path: Path = DRIVERS) -> dict:
    """images/drivers.toml, checked for the tables the rows read."""
    try:
        table = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise UserError(f"{path}: {error}; restore it with `git checkout images/{DRIVERS.name}`") from None
    missing = [key for key in ("bases", "cuda", "layers", "headroom") if not isinstance(table.get(key), dict)]
    if missing:
        raise UserError(f"{path}: no [{missing[0]}] table; see the comments in the committed file")
    return table


def root_base(image: str, hierarchy: manifest.ImageHierarchy) -> str:
    """The root base reference the image is built on: make's CUDA_BASE/NGC_BASE, else its Dockerfile's pin."""
    root = hierarchy.root(image)
    if os.environ.get(root):
        return os.environ[root]
    dockerfile = REPO_ROOT / "images" / hierarchy.lineage(image)[-1] / "Dockerfile"
    match = re.search(r"^FROM (\S+) AS root-base$", dockerfile.read_text(), re.MULTILINE)
    return match[1] if match else "?"


def probe_image(runner: str) -> dict:
    """eurosat.gpu's facts from inside the training image (compose, with make's settings) or from the venv."""
    if runner == "local":
        python = os.environ.get("VENV_PY", ".venv/bin/python")
        if not Path(python).exists():
            return {"skipped": f"{python} does not exist yet (make venv; make train creates it)"}
        command = [python, "-m", "eurosat.gpu"]
    else:
        command = ["scripts/compose.sh", "run", "--rm", "--no-deps", "-T", "train", "python3", "-m", "eurosat.gpu"]
    result = run(*command, timeout=600)
    if result is None or result.returncode != 0:
        words = (result.stderr.strip().splitlines() or ["no output"])[-1] if result else "timed out"
        return {"probe_error": words}
    return json.loads(result.stdout.strip().splitlines()[-1])


@dataclass
class Setting:
    """What make passes: the engine client, compose, the runner and the project's image."""

    docker: str
    compose: list[str]
    runner: str
    image: str  # the project's image, e.g. torch-ngc
    prefix: str
    hierarchy: manifest.ImageHierarchy
    table: dict

    @property
    def tag(self) -> str:
        return f"{self.prefix}{self.image}:latest"

    def present(self, reference: str) -> bool:
        result = run(self.docker, "image", "inspect", reference)
        return bool(result) and result.returncode == 0

    def base(self) -> tuple[str, dict]:
        """The root base reference and its row in images/drivers.toml ({} when it has none, e.g. a stand-in)."""
        reference = root_base(self.image, self.hierarchy)
        return reference, self.table["bases"].get(reference.split("@")[0], {})


def gpus_row(gpus: list[dict[str, str]], problem: str | None) -> Row:
    if gpus:
        return Row("GPUs", "ok", f"{len(gpus)}: " + ", ".join(g.get("name", "?") for g in gpus))
    if problem:
        return Row("GPUs", "FAIL", problem, "a working NVIDIA driver", "install the NVIDIA driver (nvidia-smi comes with it)")
    return Row(
        "GPUs", "ok", "none on this host (no nvidia-smi, no /dev/nvidia*)", "", "training runs on the CPU: a supported path"
    )


def compose_row(compose: list[str]) -> Row:
    version = output(*compose, "version", "--short")
    if version and version.lstrip("v").startswith("2"):
        return Row("Compose", "ok", f"v{version.lstrip('v')}", "v2")
    if compose[0].endswith("compose-v2") and not Path(compose[0]).exists():
        return Row("Compose", "ok", "not installed yet", "v2", "make installs it into .venv before its first compose call")
    return Row("Compose", "FAIL", version or "none", "v2", "install the compose v2 plugin (docker-compose-plugin)")


def engine_rows(setting: Setting, engine: dict, gpus: list) -> list[Row]:
    """The engine, compose, BuildKit, disk for the images still to build, and how GPUs reach containers."""
    client = output(setting.docker, "version", "--format", "{{.Client.Version}}")
    missing = [i for i in setting.hierarchy.lineage(setting.image) if not setting.present(f"{setting.prefix}{i}:latest")]
    buildkit = buildkit_row(client, output(setting.docker, "buildx", "version"))
    if buildkit.status == "FAIL" and not missing:  # nothing left to build for this project
        buildkit = Row(buildkit.check, "warn", buildkit.found, buildkit.needed, buildkit.fix)
    rows = [
        Row("Docker engine", "ok", f"{engine['engine']} {engine['version']} (client {client or '?'})"),
        compose_row(setting.compose),
        buildkit,
    ]
    need = setting.table["headroom"]["disk_gb"] + sum(setting.table["layers"].get(i, 1) for i in missing)
    building = [f"{setting.prefix}{i}" for i in missing]
    base, base_row = setting.base()
    if missing and not setting.present(base):
        need += base_row.get("disk_gb", 0)
        building.insert(0, base)
    root_dir = engine["root_dir"]
    free = shutil.disk_usage(root_dir).free / 1e9 if root_dir and Path(root_dir).exists() else None
    rows.append(disk_row(free, need, root_dir, building))
    if gpus:
        exposure = gpu_exposure(engine, nvidia_cdi_specs(engine["cdi_spec_dirs"]))
        how = {"nvidia": "the nvidia runtime", "cdi": "CDI devices nvidia.com/gpu"}.get(exposure or "")
        status = "ok" if exposure or setting.runner == "local" else "FAIL"
        found = how or "neither the nvidia runtime nor CDI"
        rows.append(Row("GPUs to containers", status, found, "the nvidia runtime or CDI", "" if how else TOOLKIT))
    return rows


def probe_rows(setting: Setting) -> tuple[list[Row], dict]:
    """Run the probe where training runs (the image, or the venv) and say whether it ran."""
    if setting.runner == "docker" and setting.compose[0].endswith("compose-v2") and not Path(setting.compose[0]).exists():
        return [Row("training image", "warn", "not checked: compose is not installed yet", "", "make venv")], {}
    if setting.runner == "docker" and not setting.present(setting.tag):
        fix = f"make train builds it; after `make image-{setting.image}`, make doctor checks inside it too"
        return [Row("training image", "warn", f"{setting.tag} is not built", "", fix)], {}
    stale = os.environ.get("EUROSAT_STALE_IMAGE") if setting.runner == "docker" else None
    if stale:  # make's rebuild failed (or NO_BUILD refused it): the old image is still probed, for the other rows
        fix = "fix what the rebuild says (above); make doctor rebuilds the image before it checks"
        row = Row("training image", "FAIL", f"{setting.tag} is out of date: {stale}", "an image of this tree", fix)
        facts = probe_image(setting.runner)
        return [row], ({} if "probe_error" in facts else facts)
    facts = probe_image(setting.runner)
    if "probe_error" in facts:
        return [probe_failure_row(facts["probe_error"])], {}
    if "skipped" in facts:
        return [Row("local venv", "warn", facts["skipped"])], {}
    where = setting.tag if setting.runner == "docker" else os.environ.get("VENV_PY", ".venv/bin/python")
    return [Row("training image" if setting.runner == "docker" else "local venv", "ok", where)], facts


def main(argv: list[str]) -> int:
    docker = os.environ.get("DOCKER", "docker")
    info_text = output(docker, "info", "--format", "{{json .}}")
    engine = parse_engine_info(info_text) if info_text else None
    if argv == ["exposure"]:
        print((engine and gpu_exposure(engine, nvidia_cdi_specs(engine["cdi_spec_dirs"]))) or "")
        return 0
    project = manifest.load(os.environ.get("PROJECT") or manifest.default_project())
    setting = Setting(
        docker=docker,
        compose=os.environ.get("COMPOSE", f"{docker} compose").split(),
        runner=os.environ.get("RUNNER") or ("docker" if engine else "local"),
        image=project.image,
        prefix=os.environ.get("IMAGE_PREFIX", "eurosat/"),
        hierarchy=manifest.image_hierarchy(),
        table=read_drivers(),
    )
    gpus, problem = host_gpus()
    rows = [gpus_row(gpus, problem)]
    if engine:
        rows += engine_rows(setting, engine, gpus)
    elif setting.runner == "docker":
        rows.append(Row("Docker engine", "FAIL", f"none answers `{docker} info`", "an engine", "start Docker, or RUNNER=local"))
    else:
        rows.append(Row("Docker engine", "ok", f"none answers `{docker} info`", "", "make train runs in a local venv"))
    facts: dict = {}
    if engine or setting.runner == "local":
        found, facts = probe_rows(setting)
        rows += found + (image_rows(facts, len(gpus)) if facts else [])
    if gpus:
        rows.append(driver_row(gpus, facts.get("cuda") or setting.base()[1].get("cuda"), setting.table))
    print(f"make doctor: PROJECT={project.name}, image {setting.tag}, RUNNER={setting.runner}")
    print(render(rows))
    line, status = summary(rows)
    print(line)
    return status


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
