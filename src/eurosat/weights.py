"""Pretrained weights pinned like packages: weights.lock records, for each model trained from ImageNet weights, the
hub repository, the exact revision (a commit), the file, its size and its sha256.

    make weights                 fetch every locked entry into the weights cache, each file checked
    make weights MODEL=<name>    fetch MODEL's locked file; a model not in the lock: record the hub's current revision
    make weights MODEL=<name> REVISION=<commit or main>   move MODEL's entry to that revision

The Makefile points HF_HOME at MODEL_CACHE, which compose, the dev container, the Slurm script and the PyTorchJob
mount at /models: weights fetched once, where there is internet, serve every later run, offline too. A training
run loads only a file whose sha256 is its entry's; a model not in the lock is fetched, recorded and said (as the
image locks re-solve for a foreign base), and refused under LOCKED=1.

A lock entry may leave out `revision` and `size` when public records give only the file's sha256 (the committed
tf_efficientnet_b5 entry): a value left out is not yet resolved. The first online fetch takes the hub's current
revision, refuses the file unless its sha256 is the pinned one, and writes the commit and size it found.

Before a container, a torchrun job or a cluster job starts a pretrained run, make calls `for_runs` on the host
(`python -m eurosat.weights --for-run PROJECT ARGS...`), where the lock is writable and the hub reachable: the
run then finds its model locked and its file in MODEL_CACHE, offline too.
"""

from __future__ import annotations

import hashlib
import os
import socket
import sys
import tomllib
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import getproxies

from eurosat.cli import run_cli
from eurosat.errors import UserError
from eurosat.manifest import REPO_ROOT

LOCK_ENV = "EUROSAT_WEIGHTS_LOCK"  # the Makefile's WEIGHTS_LOCK; tests point it at a copy
FILES = ("model.safetensors", "pytorch_model.bin")  # what timm publishes on the hub, in the order it prefers
HEADER = """# Pretrained weights, pinned like packages: `make weights MODEL=<timm name>` adds an entry (where there is internet),
# `make weights` fetches every entry into MODEL_CACHE. A run loads only a file whose sha256 is the one here.
# An entry without `revision` and `size` pins its file by sha256 alone (public records give no more): the first
# online `make weights` fills them in from the hub, and refuses a file with another sha256.
"""
PROBE_SECONDS = 3.0  # how long the hub may take to accept a connection before it counts as out of reach


@dataclass(frozen=True)
class Entry:
    repo: str  # the Hugging Face hub repository
    revision: str | None  # its commit (None: not yet resolved)
    file: str
    size: int | None  # bytes (None: not yet resolved)
    sha256: str

    def source(self) -> str:
        return f"hf-hub:{self.repo}@{self.revision or 'main'}/{self.file}"


def lock_path() -> Path:
    return Path(os.environ.get(LOCK_ENV) or REPO_ROOT / "weights.lock")


def read_lock(path: Path) -> dict[str, Entry]:
    try:
        data = tomllib.loads(path.read_text()) if path.exists() else {}
        return {model: Entry(**{"revision": None, "size": None, **fields}) for model, fields in data.items()}
    except (tomllib.TOMLDecodeError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"{path} is not a weights lock ({exc}): restore it (git checkout -- {path.name})") from None


def write_lock(path: Path, entries: dict[str, Entry]) -> None:
    blocks = []
    for model, entry in sorted(entries.items()):
        fields = "".join(
            f'{key} = "{v}"\n' if isinstance(v, str) else f"{key} = {v}\n" for key, v in asdict(entry).items() if v is not None
        )
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


def hub_address() -> tuple[str, int]:
    """Where a connection to the hub goes first: the HTTPS proxy when one is set, else HF_ENDPOINT's host."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    proxy = getproxies().get(endpoint.scheme)
    target = urlsplit(proxy if "://" in (proxy or "") else f"http://{proxy}") if proxy else endpoint
    return target.hostname or "", target.port or (443 if target.scheme == "https" else 80)


def go_offline_unless_reachable() -> str:
    """Without a connection to the hub within PROBE_SECONDS, the hub client is switched to its cache (HF_HUB_OFFLINE):
    one quick probe instead of its retries (ten, about 50 s; minutes behind a firewall that drops packets). Returns
    why it went offline, or ""."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return ""
    host, port = hub_address()
    try:
        socket.create_connection((host, port), timeout=PROBE_SECONDS).close()
        return ""
    except OSError as exc:
        os.environ["HF_HUB_OFFLINE"] = "1"
        from huggingface_hub import constants

        constants.HF_HUB_OFFLINE = True  # read at import, and at each call
        return f"{host}:{port} unreachable ({exc.strerror or exc.__class__.__name__})"


def cached_file(repo: str, file: str, revision: str) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, file, revision=revision)
    return Path(found) if isinstance(found, str) else None


def hub_file(repo: str, file: str, revision: str) -> Path:
    """A file of the hub at `revision`: from the cache when it holds it, else downloaded (after the probe)."""
    from huggingface_hub import hf_hub_download

    found = cached_file(repo, file, revision) if len(revision) == 40 else None  # a branch may have moved
    if found is not None:
        return found
    why = go_offline_unless_reachable()
    try:
        return Path(hf_hub_download(repo, file, revision=revision))
    except Exception as exc:
        if why:
            exc.add_note(why)  # for the one line unavailable() writes
        raise


def download(repo: str, revision: str) -> Path:
    """The first of FILES the repository has at `revision`, from the cache or the hub (HF_HUB_OFFLINE: the cache)."""
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    missing = None
    for name in FILES:
        try:
            return hub_file(repo, name, revision)
        except LocalEntryNotFoundError as exc:  # not in the cache, and the hub out of reach
            missing = missing or exc
        except EntryNotFoundError:  # the repository has no such file
            continue
    if missing:
        raise missing
    raise UserError(f"hf-hub:{repo}@{revision} holds none of {', '.join(FILES)}: pass --weights PATH")


def fetch(model: str, entry: Entry) -> tuple[Path, Entry]:
    """The entry's file, downloaded into the cache when it is not there yet, its size and sha256 checked; and the
    entry with its revision and size resolved (the hub's current ones, for an entry that leaves them out)."""
    try:
        path = hub_file(entry.repo, entry.file, entry.revision or "main")
    except Exception as exc:  # offline, a proxy, or not in the cache with HF_HUB_OFFLINE=1
        raise unavailable(model, exc) from None
    actual, size = sha256_of(path), path.stat().st_size
    if actual != entry.sha256 or size != (entry.size or size):
        pinned = entry.sha256 + (f" ({entry.size} bytes)" if entry.size else "")
        raise UserError(
            f"{path}: sha256 {actual} ({size} bytes), but {lock_path()} pins {model} to {pinned}: delete the file and "
            f"run `make weights MODEL={model}`"
        )
    return path, replace(entry, revision=entry.revision or path.parent.name, size=size)  # snapshots/<commit>/<file>


def unavailable(model: str, exc: Exception) -> UserError:
    notes = getattr(exc, "__notes__", [])
    if notes:  # the probe found the hub out of reach
        why = f" ({exc.__class__.__name__}; {notes[0]}: the cache only)"
    else:
        why = f" ({exc.__class__.__name__}{', HF_HUB_OFFLINE=1: the cache only' if os.environ.get('HF_HUB_OFFLINE') else ''})"
    return UserError(
        f"--pretrained: cannot get ImageNet weights for {model}{why}: run `make weights MODEL={model}` where there is "
        "internet (and copy MODEL_CACHE here), or pass --no-pretrained"
    )


def save_entry(model: str, entry: Entry) -> None:
    lock = lock_path()
    try:
        write_lock(lock, {**read_lock(lock), model: entry})
    except OSError as exc:  # e.g. the repository mounted read-only in a container
        raise UserError(
            f"cannot record {model}'s weights in {lock} ({exc.strerror}): run `make weights MODEL={model}` in the "
            "repository, or pass --no-pretrained"
        ) from None


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
    save_entry(model, entry)
    return path, entry


def pretrained_file(model: str, main_process: bool = True) -> tuple[Path, Entry | None]:
    """The checked file of `model`'s locked ImageNet weights, in the cache. A model not in the lock is recorded (by
    the main process; under LOCKED=1 it is refused instead); an entry whose revision and size are not yet resolved
    gets them written. What changed in the lock is said, with the line that commits it."""
    lock = lock_path()
    entry = read_lock(lock).get(model)
    if entry is not None:
        path, resolved = fetch(model, entry)
        if resolved != entry and main_process:
            try:
                save_entry(model, resolved)
                print(
                    f"{lock.name}: {model} resolved: {resolved.source()}, {resolved.size} bytes: commit it: git add {lock.name}"
                )
            except UserError as exc:  # the file is checked by its sha256 all the same
                print(f"warning: {exc}", file=sys.stderr)
        return path, resolved
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


# Flags after which a run starts from no hub weights: they need nothing fetched (--no-pretrained: unless a later
# --pretrained overrides it)
NO_HUB_WEIGHTS = ("--weights", "--resume", "evaluate", "predict", "-h", "--help")


def refuse(message: str):
    raise ValueError(message)


def needs_hub_weights(train_args: list[str]) -> bool:
    """Whether a run with these flags may start from the hub's weights (the parser decides the rest)."""
    flags = [arg.split("=")[0] for arg in train_args]
    if any(flag in NO_HUB_WEIGHTS for flag in flags):
        return False
    if [flag for flag in flags if flag in ("--pretrained", "--no-pretrained")][-1:] == ["--no-pretrained"]:
        return False
    run_dir = next((train_args[i + 1] for i, arg in enumerate(train_args[:-1]) if arg == "--run-dir"), None)
    return not (run_dir and (Path(run_dir) / "last.ckpt").exists())  # a requeued job continues from its checkpoint


def for_runs(project: str, runs: list[list[str]]) -> None:
    """On the host, before containers or jobs start `project` with each of `runs` (train flags): each model's ImageNet
    weights locked and in the cache, unless its run needs none. Flags a run would refuse are left for it to say."""
    runs = [[arg for arg in args if arg != "train"] for args in runs if needs_hub_weights(args)]
    if not runs:
        return
    from eurosat.lifecycle import make_parser  # torch and timm: only for a run that may need the hub's weights
    from eurosat.projects import load_project

    train = make_parser(load_project(project).EXPERIMENT)[1]["train"]
    train.error = refuse  # bad flags: the run says so itself, in its own words
    models = []
    for args in runs:
        try:
            parsed = train.parse_args(args)
        except ValueError:
            continue
        if parsed.pretrained and not parsed.weights and parsed.model not in models:
            models.append(parsed.model)
    for model in models:
        path, entry = pretrained_file(model)
        print(f"weights: {model}: {path} (sha256 {entry.sha256} checked)")


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--for-run"]:
        if len(argv) < 2:
            raise UserError("--for-run PROJECT [train flags...]: name the project")
        return for_runs(argv[1], [argv[2:]])
    model, revision = (argv + ["", ""])[:2]
    lock = lock_path()
    entries = read_lock(lock)
    if not model:
        if not entries:
            raise UserError(f"{lock} has no entry yet: run `make weights MODEL=<timm name>`")
        for name in entries:
            path, entry = pretrained_file(name)
            print(f"{name}: {path} (sha256 {entry.sha256} checked)")
        return
    if model in entries and not revision:
        path, entry = pretrained_file(model)
        print(f"{model}: {path} (sha256 {entry.sha256} checked)")
        return
    path, entry = record(model, revision or "main")
    print(f"{model}: {path} (sha256 {entry.sha256})")
    before = entries.get(model)
    change = "added" if before is None else ("unchanged" if before == entry else f"moved from {before.revision}")
    print(f"{lock.name}: {model} {change}: {entry.source()}" + ("" if before == entry else f": commit it: git add {lock.name}"))


if __name__ == "__main__":
    run_cli(main)
