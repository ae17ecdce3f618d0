"""Pretrained weights pinned like packages: weights.lock records, for each model trained from ImageNet weights, the
hub repository, the exact revision (a commit), the file, its size and its sha256.

    make weights                 fetch every locked entry into the weights cache, each file checked
    make weights MODEL=<name>    fetch MODEL's locked file; a model not in the lock: record the hub's current revision
    make weights MODEL=<name> REVISION=<commit or main>   move MODEL's entry to that revision

The Makefile points HF_HOME at MODEL_CACHE, which compose, the dev container, the Slurm script and the PyTorchJob
mount at /models: weights fetched once, where there is internet, serve every later run, offline too. A training
run loads only a file whose sha256 is its entry's; a model not in the lock is fetched, recorded and said (as the
image locks re-solve for a foreign base), and refused under LOCKED=1.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path

from eurosat.cli import run_cli
from eurosat.errors import UserError
from eurosat.manifest import REPO_ROOT

LOCK_ENV = "EUROSAT_WEIGHTS_LOCK"  # the Makefile's WEIGHTS_LOCK; tests point it at a copy
FILES = ("model.safetensors", "pytorch_model.bin")  # what timm publishes on the hub, in the order it prefers
HEADER = """# Pretrained weights, pinned like packages: `make weights MODEL=<timm name>` adds an entry (where there is internet),
# `make weights` fetches every entry into MODEL_CACHE. A run loads only a file whose sha256 is the one here.
"""


@dataclass(frozen=True)
class Entry:
    repo: str  # the Hugging Face hub repository
    revision: str  # its commit
    file: str
    size: int
    sha256: str

    def source(self) -> str:
        return f"hf-hub:{self.repo}@{self.revision}/{self.file}"


def lock_path() -> Path:
    return Path(os.environ.get(LOCK_ENV) or REPO_ROOT / "weights.lock")


def read_lock(path: Path) -> dict[str, Entry]:
    try:
        data = tomllib.loads(path.read_text()) if path.exists() else {}
        return {model: Entry(**fields) for model, fields in data.items()}
    except (tomllib.TOMLDecodeError, TypeError, ValueError) as exc:
        raise UserError(f"{path} is not a weights lock ({exc}): restore it (git checkout -- {path.name})") from None


def write_lock(path: Path, entries: dict[str, Entry]) -> None:
    blocks = []
    for model, entry in sorted(entries.items()):
        fields = "".join(f'{key} = "{v}"\n' if isinstance(v, str) else f"{key} = {v}\n" for key, v in asdict(entry).items())
        blocks.append(f'["{model}"]\n{fields}')
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(HEADER + "".join(f"\n{block}" for block in blocks))
    partial.replace(path)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def hub_repo(model: str) -> str:
    import timm

    from eurosat.models import check_model_name

    check_model_name(model)
    cfg = timm.models.get_pretrained_cfg(model)
    if cfg is None or not cfg.hf_hub_id:
        raise UserError(f"--model {model}: timm publishes no ImageNet weights for it on the hub: pass --no-pretrained")
    return cfg.hf_hub_id


def download(repo: str, revision: str) -> Path:
    """The first of FILES the repository has at `revision`, from the cache or the hub (HF_HUB_OFFLINE: the cache)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    missing = None
    for name in FILES:
        try:
            return Path(hf_hub_download(repo, name, revision=revision))
        except LocalEntryNotFoundError as exc:  # not in the cache, and the hub out of reach
            missing = missing or exc
        except EntryNotFoundError:  # the repository has no such file
            continue
    if missing:
        raise missing
    raise UserError(f"hf-hub:{repo}@{revision} holds none of {', '.join(FILES)}: pass --weights PATH")


def fetch(model: str, entry: Entry) -> Path:
    """The entry's file, downloaded into the cache when it is not there yet, its size and sha256 checked."""
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(entry.repo, entry.file, revision=entry.revision))
    except Exception as exc:  # offline, a proxy, or not in the cache with HF_HUB_OFFLINE=1
        raise unavailable(model, exc) from None
    actual = sha256_of(path)
    if actual != entry.sha256 or path.stat().st_size != entry.size:
        raise UserError(
            f"{path}: sha256 {actual} ({path.stat().st_size} bytes), but {lock_path()} pins {model} to {entry.sha256} "
            f"({entry.size} bytes): delete the file and run `make weights MODEL={model}`"
        )
    return path


def unavailable(model: str, exc: Exception) -> UserError:
    offline = ", HF_HUB_OFFLINE=1: the cache only" if os.environ.get("HF_HUB_OFFLINE") else ""
    return UserError(
        f"--pretrained: cannot get ImageNet weights for {model} ({exc.__class__.__name__}{offline}): run "
        f"`make weights MODEL={model}` where there is internet (and copy MODEL_CACHE here), or pass --no-pretrained"
    )


def record(model: str, revision: str = "main") -> tuple[Path, Entry]:
    """Fetch `model`'s weights at `revision` and write its entry (the commit it resolves to) into the lock."""
    repo = hub_repo(model)
    try:
        path = download(repo, revision)
    except UserError:
        raise
    except Exception as exc:
        raise unavailable(model, exc) from None
    commit = path.parent.name  # the hub cache's snapshots/<commit>/<file>
    entry = Entry(repo, commit, path.name, path.stat().st_size, sha256_of(path))
    lock = lock_path()
    try:
        write_lock(lock, {**read_lock(lock), model: entry})
    except OSError as exc:  # e.g. the repository mounted read-only in a container
        raise UserError(
            f"cannot record {model}'s weights in {lock} ({exc.strerror}): run `make weights MODEL={model}` in the "
            "repository, or pass --no-pretrained"
        ) from None
    return path, entry


def pretrained_file(model: str, main_process: bool = True) -> tuple[Path, Entry | None]:
    """The checked file of `model`'s locked ImageNet weights, for a run that trains from them. A model not in the
    lock is recorded (by the main process; under LOCKED=1 it is refused instead)."""
    lock = lock_path()
    entry = read_lock(lock).get(model)
    if entry is not None:
        return fetch(model, entry), entry
    if os.environ.get("LOCKED") == "1":
        raise UserError(
            f"--pretrained: {model} is not in {lock}, and LOCKED=1 loads only locked weights: run `make weights "
            f"MODEL={model}` where there is internet and commit {lock.name}, or pass --no-pretrained"
        )
    if not main_process:  # rank 0 records it; the others find the same file
        try:
            return download(hub_repo(model), "main"), None
        except UserError:
            raise
        except Exception as exc:
            raise unavailable(model, exc) from None
    path, entry = record(model)
    recorded = f"recorded {entry.source()} (sha256 {entry.sha256})"
    print(f"{lock.name}: {model} was not locked; {recorded}: commit it: git add {lock.name}")
    return path, entry


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    model, revision = (argv + ["", ""])[:2]
    lock = lock_path()
    entries = read_lock(lock)
    if not model:
        if not entries:
            raise UserError(f"{lock} has no entry yet: run `make weights MODEL=<timm name>`")
        for name, entry in entries.items():
            print(f"{name}: {fetch(name, entry)} (sha256 {entry.sha256} checked)")
        return
    if model in entries and not revision:
        print(f"{model}: {fetch(model, entries[model])} (sha256 {entries[model].sha256} checked)")
        return
    path, entry = record(model, revision or "main")
    print(f"{model}: {path} (sha256 {entry.sha256})")
    before = entries.get(model)
    change = "added" if before is None else ("unchanged" if before == entry else f"moved from {before.revision}")
    print(f"{lock.name}: {model} {change}: {entry.source()}" + ("" if before == entry else f": commit it: git add {lock.name}"))


if __name__ == "__main__":
    run_cli(main)
