"""Run directories: runs/<project>/<run-id>/ with config, metrics, checkpoints and provenance."""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

from eurosat import selection
from eurosat.errors import UserError

REPO_ROOT = Path(__file__).resolve().parents[2]


def create_run_dir(out_root: Path, name: str) -> Path:
    """A new, empty run directory under out_root; never reuses an existing one."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        out_root.mkdir(parents=True, exist_ok=True)
        for attempt in range(1000):
            run_dir = out_root / (f"{stamp}-{name}" + (f"-{attempt}" if attempt else ""))
            try:
                run_dir.mkdir()
            except FileExistsError:
                continue
            (run_dir / ".write-test").touch()
            (run_dir / ".write-test").unlink()
            return run_dir
    except OSError as exc:
        raise UserError(
            f"cannot write to output directory {out_root} ({exc.strerror}): pass --out PATH to a writable folder"
        ) from None
    raise UserError(f"output directory {out_root} has too many runs named {stamp}-{name}")


def previous_checkpoint(path: Path) -> Path:
    """last.ckpt -> last.prev.ckpt: the checkpoint before the newest, kept for when the newest is damaged."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def resolve_resume(path: Path) -> tuple[Path, Path, dict]:
    """(run directory, checkpoint path, the loaded checkpoint) for --resume RUN_DIR or --resume RUN_DIR/last.ckpt.

    A truncated or corrupt checkpoint is reported in one line and the previous good one is used instead."""
    checkpoint = path / "last.ckpt" if path.is_dir() else path
    previous = previous_checkpoint(checkpoint)
    if not checkpoint.is_file() and previous.is_file():  # killed between the two renames of save_checkpoint
        print(f"warning: {checkpoint} is missing; resuming from the previous checkpoint {previous}", file=sys.stderr)
        checkpoint = previous
    if not checkpoint.is_file():
        raise UserError(f"--resume {path}: no checkpoint at {checkpoint}")
    try:
        return checkpoint.parent, checkpoint, load_checkpoint(checkpoint)
    except UserError as problem:
        try:
            state = load_checkpoint(previous)
        except UserError:
            raise problem from None
        print(f"warning: {problem}; resuming from the previous checkpoint {previous}", file=sys.stderr)
        return previous.parent, previous, state


def _write_atomically(path: Path, write, before_replace=None) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if before_replace:
            before_replace()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_checkpoint(state: dict, path: Path, keep_previous: bool = False) -> None:
    """torch.save that never leaves a half-written file behind (temporary file, fsync, rename). A failed write
    (disk full, directory no longer writable) leaves the previous checkpoint in place and raises one clear line.

    keep_previous moves the checkpoint it replaces to last.prev.ckpt, for resume to fall back on."""
    path = Path(path)

    def keep():
        if keep_previous and path.exists():
            os.replace(path, previous_checkpoint(path))

    buffer = io.BytesIO()  # serialised first, so that a failing write surfaces as the OSError it is
    torch.save(state, buffer)
    try:
        _write_atomically(path, lambda handle: handle.write(buffer.getbuffer()), keep)
    except OSError as exc:
        fix = f"free disk space or make {path.parent} writable"
        last = path.with_name("last.ckpt")
        if last.is_file():  # what --resume continues from
            then = f"then continue with --resume {path.parent} ({last} holds the last checkpoint written)"
        else:
            then = "then train again: no checkpoint was written yet, so there is nothing to resume"
        raise UserError(f"cannot write checkpoint {path} ({exc.strerror or exc}): {fix}, {then}") from None


def write_json(path: Path, data) -> None:
    _write_atomically(Path(path), lambda handle: handle.write((json.dumps(data, indent=2, default=str) + "\n").encode()))


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except FileNotFoundError:
        raise UserError(f"cannot load checkpoint {path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"cannot load checkpoint {path}: a folder, not a checkpoint file") from None
    except Exception as exc:  # truncated, corrupt or not a checkpoint
        raise UserError(
            f"cannot load checkpoint {path} ({exc.__class__.__name__}): the file is corrupt or not a checkpoint"
        ) from None


class MetricsLog:
    """metrics.jsonl (one line per epoch) and the metrics.json summary."""

    def __init__(self, run_dir: Path):
        self.path, self.summary_path = run_dir / "metrics.jsonl", run_dir / "metrics.json"

    def restart(self, history: list[dict]) -> None:
        """Rewrite the log from a checkpoint's history, dropping epochs trained after that checkpoint."""
        _write_atomically(self.path, lambda handle: handle.write("".join(json.dumps(r) + "\n" for r in history).encode()))

    def append(self, record: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def write_summary(self, history: list[dict], select: str = "val_acc", **extra) -> None:
        best = selection.best(history, select)
        write_json(
            self.summary_path,
            {"epochs": len(history), "final": history[-1] if history else None, "best": best, "selected_on": select, **extra},
        )


def record_provenance(run_dir: Path, record: dict) -> None:
    """provenance.json describes the process that started the run; each resume is appended under `resumes`."""
    path = run_dir / "provenance.json"
    if path.exists():
        original = json.loads(path.read_text())
        record = {**original, "resumes": [*original.get("resumes", []), record]}
    write_json(path, record)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _run(*cmd: str) -> str | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _sha256(path: Path) -> str | None:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def provenance(seed: int, device: torch.device, world_size: int = 1) -> dict:
    """A record of exactly what ran: code, lockfile, library versions, hardware, command line."""
    lockfile = Path(os.environ.get("EUROSAT_LOCKFILE") or REPO_ROOT / "requirements.lock")
    commit = _run("git", "-C", str(REPO_ROOT), "rev-parse", "HEAD")
    if commit:
        dirty = bool(_run("git", "-C", str(REPO_ROOT), "status", "--porcelain"))
    else:  # in a container without git (or without the .git folder) make passes what the host's git said
        commit = os.environ.get("EUROSAT_GIT_COMMIT") or None
        dirty = bool(os.environ.get("EUROSAT_GIT_DIRTY")) if commit else None
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if device.type == "cuda" else []
    driver = None
    if gpus and shutil.which("nvidia-smi"):
        driver = (_run("nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader") or "").splitlines()[0] or None
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "seed": seed,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "git": {"commit": commit, "dirty": dirty},
        "lockfile": {"path": str(lockfile), "sha256": _sha256(lockfile)},
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "timm": _version("timm"),
            "pytorch_lightning": _version("pytorch-lightning"),
            "numpy": _version("numpy"),
        },
        "hardware": {
            "host": socket.gethostname(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "device": str(device),
            "world_size": world_size,
            "gpus": gpus,
            "driver": driver,
        },
        "container": container_image(),
        "runner": runner(),
    }


def runner() -> dict:
    """What started the run, so that `make reproduce` reruns it the same way: compose (make train's Docker runner), a
    Slurm job, a Kubernetes PyTorchJob (each sets EUROSAT_RUNNER), or a process on this machine (the venv)."""
    found = {"name": os.environ.get("EUROSAT_RUNNER") or "local"}
    if os.environ.get("SLURM_JOB_ID"):
        found["slurm"] = {"job_id": os.environ["SLURM_JOB_ID"], "nodes": int(os.environ.get("SLURM_JOB_NUM_NODES") or 1)}
    return found


def container_image() -> dict:
    """The image a run ran in, from every runner: what the image says of itself (the commit it was built from, each
    layer's lock: its Dockerfiles' ENV), and what the runner that started it knows (compose: the image id; Slurm and
    the PyTorchJob: the reference, pinned by digest where `make push` recorded one)."""
    image = os.environ.get("EUROSAT_IMAGE") or None
    locks = os.environ.get("EUROSAT_IMAGE_LOCKS", "")
    return {
        "in_container": Path("/.dockerenv").exists() or "EUROSAT_IMAGE_REVISION" in os.environ,
        "image": image,
        "image_id": os.environ.get("CONTAINER_IMAGE_ID") or None,
        "digest": image.split("@", 1)[1] if image and "@sha256:" in image else None,
        "revision": os.environ.get("EUROSAT_IMAGE_REVISION") or None,
        "locks": dict(layer.split("=", 1) for layer in locks.split() if "=" in layer) or None,
    }
