"""What the tests share: real processes as a user starts them, projects run in-process, run-directory checks."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from eurosat import manifest
from eurosat.cli import run_cli
from eurosat.projects import load_project

REPO = Path(__file__).resolve().parents[1]
PROJECTS = manifest.project_names()  # every project-parametrized test runs on each, a scaffolded one included
# timm's smallest ResNet (0.37M parameters, a 4.5 MB checkpoint): where the model is not the point, it trains the
# sample data to a clear result in a fraction of resnet10t's time (4.9M parameters, 59 MB per checkpoint).
MODEL = "test_resnet"
SMALL = ["--model", MODEL, "--batch-size", "16", "--no-pretrained"]  # random weights: tests run offline
# Where a test races a signal or a limit against training (stop mid-epoch, after a checkpoint), a model whose steps
# take long enough that the epoch is still running when it lands: resnet10t, ~0.2 s a step at batch 16 on 2 cores.
PACED = ["--model", "resnet10t", "--batch-size", "16", "--no-pretrained"]
# 540 sample images with a 25% validation share: 135, odd, so a padding sampler on 2 ranks would count 136
DDP_ARGS = ["--epochs", "1", "--batch-size", "32", "--model", MODEL, "--val-fraction", "0.25", "--no-pretrained"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_serving(url: str, server: subprocess.Popen, what: str, seconds: float = 120) -> None:
    """Wait until a server process this test started answers `url`; fail if it exits or takes too long."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except (urllib.error.URLError, ConnectionError):
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{what} did not start") from None
            time.sleep(0.3)


def run(*args, check: bool = True, timeout: float = 300, **kwargs) -> subprocess.CompletedProcess:
    """A real process, as a user starts it, from the repository root."""
    result = subprocess.run([str(a) for a in args], cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def run_project(project: str, *args, **kwargs) -> subprocess.CompletedProcess:
    return run(sys.executable, REPO / "projects" / project / "train.py", *args, **kwargs)


@functools.cache
def project_module(project: str):
    return load_project(project)


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    value: object = None  # what main() returned


def cli_in_process(main, *args, check: bool = True) -> Result:
    """A command's main(argv) in this process, through the same one-line error handling as its command line."""
    stdout, stderr, value, code = io.StringIO(), io.StringIO(), None, 0

    def call(argv):
        nonlocal value
        value = main(argv)

    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        try:
            run_cli(call, [str(a) for a in args])
        except SystemExit as exit:
            code = exit.code
    result = Result(code, stdout.getvalue(), stderr.getvalue(), value)
    if check and code:
        raise AssertionError(f"{main.__module__} {args} exited {code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def main_in_process(project: str, *args, check: bool = True) -> Result:
    """train.py's main(argv) in this process."""
    return cli_in_process(project_module(project).main, *args, check=check)


def script_module(path: Path, name: str):
    """A script of this repository (not a package module) imported as `name`, as `python path` would run it."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def single_run_dir(out: Path) -> Path:
    runs = [p for p in out.iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    return runs[0]


def read_metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("images_per_s", "seconds", "elapsed_s", "bn_recompute_s")} for r in history]


def weights(checkpoint_path: Path) -> dict:
    """The network's weights in a checkpoint: plain PyTorch's "model" or Lightning's "state_dict"."""
    checkpoint = torch.load(checkpoint_path, weights_only=False)
    return checkpoint["state_dict"] if "state_dict" in checkpoint else checkpoint["model"]


def assert_same_weights(first: Path, second: Path) -> None:
    a, b = weights(first), weights(second)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]


def check_two_process_run(result, out: Path) -> None:
    """Both processes wrote one run directory, counted every validation image once, printed once."""
    run_dir = single_run_dir(out)
    (record,) = read_metrics(run_dir)
    assert record["val_samples"] == 135
    evaluation = json.loads((run_dir / "evaluation.json").read_text())  # by rank 0 alone, after training
    assert evaluation["samples"] == 135 and sum(map(sum, evaluation["confusion_matrix"])) == 135
    assert json.loads((run_dir / "config.json").read_text())["world_size"] == 2
    assert result.stdout.count("Epoch 1/1 loss") == 1  # rank 0 prints, rank 1 does not


def copy_repository(root: Path) -> Path:
    """The working tree's tracked and new files, committed in a fresh git repository at root (to use this .venv)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True)
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (REPO / name).is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, root / name)  # the times too: make must see .venv as up to date
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", root]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "copy"]):
        subprocess.run([*git, *command], check=True)
    return root


def in_clone(clone: Path, *args, check: bool = True, timeout: int = 600, env=None) -> subprocess.CompletedProcess:
    env = {**(env or os.environ), "PYTHONPATH": str(clone / "src")}  # its own eurosat package, not this one's editable install
    result = subprocess.run([str(a) for a in args], cwd=clone, env=env, capture_output=True, text=True, timeout=timeout)
    if check and result.returncode:
        raise AssertionError(f"{args} exited {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def make_in_clone(clone: Path, *args, **kwargs) -> subprocess.CompletedProcess:
    return in_clone(clone, "make", *args, f"VENV={REPO / '.venv'}", **kwargs)


def write_hub_entry(hf_home: Path, repo_id: str, files: dict[str, bytes]) -> str:
    """A model repository as huggingface_hub caches it: hub/models--<org>--<name>/ with blobs/ named by their
    sha256, snapshots/<commit>/ of links to them, and refs/main naming the commit. Returns the commit."""
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return commit


def pinned_stand_in(cache: Path, lock: Path, model: str, data: bytes = b"stand-in weights", resolved: bool = True) -> dict:
    """A MODEL_CACHE holding a stand-in file as `model`'s hub weights, pinned in `lock` (a copy of weights.lock) by
    its sha256: for what checks a file without loading it (make's weights step). resolved=False leaves revision and
    size out of the entry, as the committed tf_efficientnet_b5 entry does. Returns the entry, with the commit."""
    import timm

    from eurosat.weights import Entry, read_lock, write_lock

    repo_id = timm.models.get_pretrained_cfg(model).hf_hub_id
    commit = write_hub_entry(cache / "huggingface", repo_id, {"pytorch_model.bin": data})
    sha256 = hashlib.sha256(data).hexdigest()
    entry = Entry(repo_id, commit if resolved else None, "pytorch_model.bin", len(data) if resolved else None, sha256)
    write_lock(lock, {**read_lock(lock), model: entry})
    return {"repo": repo_id, "revision": commit, "file": "pytorch_model.bin", "size": len(data), "sha256": sha256}


def cached_weights(cache: Path, model: str, lock: Path | None = None) -> Path:
    """A MODEL_CACHE holding `model`'s ImageNet weights (seeded random ones) in the hub's cache layout, and, with
    `lock`, their weights.lock entry written there, as `make weights MODEL=...` writes it."""
    import safetensors.torch
    import timm

    from eurosat.weights import Entry, read_lock, write_lock

    torch.manual_seed(7)
    data = safetensors.torch.save(timm.create_model(model).state_dict())
    repo_id = timm.models.get_pretrained_cfg(model).hf_hub_id
    commit = write_hub_entry(cache / "huggingface", repo_id, {"model.safetensors": data})
    if lock is not None:
        entry = Entry(repo_id, commit, "model.safetensors", len(data), hashlib.sha256(data).hexdigest())
        write_lock(lock, {**read_lock(lock), model: entry})
    return cache


def kill_after_first_checkpoint(command: list, out: Path, cwd: Path = REPO, env=None) -> Path:
    """Start a training command, SIGKILL it as soon as a last.ckpt appears under `out` (its first mid-epoch
    checkpoint), and return its run directory."""
    process = subprocess.Popen([str(c) for c in command], cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 120
    while not any(out.glob("*/last.ckpt")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-2000:]
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    return single_run_dir(out)
