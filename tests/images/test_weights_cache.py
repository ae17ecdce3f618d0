"""The weights in containers: before `make train` starts a container, the host locks the run's model in the
repository's weights.lock (which the container mounts read-only) and checks its file in MODEL_CACHE, which the
container mounts at /models; the container then trains from the locked ImageNet weights offline. A tampered file is
one line from the host, before any container starts."""

import json
import os
import time
import tomllib

from engine import make_settings
from helpers import SMALL, cached_weights, copy_repository, make_in_clone, read_metrics, single_run_dir

from eurosat import manifest


def test_a_container_trains_pretrained_from_weights_the_host_locked_and_cached(built_images, sample_dir, tmp_path):
    repo_clone = copy_repository(tmp_path / "repo")
    model = SMALL[SMALL.index("--model") + 1]
    cache = cached_weights(tmp_path / "models", model)  # in the hub's cache layout, not yet in the lock
    project = manifest.default_project()
    args = " ".join([*SMALL, "--epochs", "1", "--pretrained"])
    # the clone's own weights.lock, as a user's first `make train` finds it (not the tests' copy)
    offline = {key: value for key, value in os.environ.items() if key not in ("EUROSAT_WEIGHTS_LOCK", "LOCKED")}
    offline["HF_HUB_OFFLINE"] = "1"
    settings = [f"PROJECT={project}", "RUNNER=docker", f"DATA={sample_dir}", f"ARGS={args}", *make_settings()]
    start = time.monotonic()
    first = make_in_clone(repo_clone, "train", f"MODEL_CACHE={cache}", *settings, env=offline)
    entry = tomllib.loads((repo_clone / "weights.lock").read_text())[model]
    said = f"weights.lock: {model} was not locked; recorded hf-hub:{entry['repo']}@{entry['revision']}/model.safetensors"
    timeline = [(line, first.stdout.index(line)) for line in (said, f"weights: {model}: ", "run runs/")]
    print(f"pretrained Docker-runner run: {time.monotonic() - start:.1f} s; {[line for line, _ in timeline]}")
    assert [at for _, at in timeline] == sorted(at for _, at in timeline), first.stdout  # locked, checked, then the run
    assert first.stdout.count(said) == 1  # by the host: the container found the model locked
    run_dir = single_run_dir(repo_clone / "runs" / project)
    recorded = json.loads((run_dir / "provenance.json").read_text())["pretrained"]
    assert recorded["sha256"] == entry["sha256"] and recorded["revision"] == entry["revision"]
    assert len(read_metrics(run_dir)) == 1

    again = make_in_clone(repo_clone, "train", f"MODEL_CACHE={cache}", *settings, env=offline)  # locked: checked, used
    assert "was not locked" not in again.stdout and f"(sha256 {entry['sha256']} checked)" in again.stdout

    blob = next((cache / "huggingface").rglob("blobs/*"))
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    runs_before = sorted((repo_clone / "runs" / project).iterdir())
    refused = make_in_clone(repo_clone, "train", f"MODEL_CACHE={cache}", *settings, env=offline, check=False)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode != 0 and len(errors) == 1, refused.stderr
    assert errors[0].startswith(f"error: {cache}/huggingface/") and f"pins {model} to {entry['sha256']}" in errors[0]
    assert "Traceback" not in refused.stderr and "run runs/" not in refused.stdout  # the host's path: no container
    assert sorted((repo_clone / "runs" / project).iterdir()) == runs_before

    empty = tmp_path / "empty"  # the same command without the weights: the host says so before a container starts
    result = make_in_clone(repo_clone, "train", f"MODEL_CACHE={empty}", *settings, env=offline, check=False)
    assert result.returncode != 0
    error = f"error: --pretrained: cannot get ImageNet weights for {model} (LocalEntryNotFoundError, HF_HUB_OFFLINE=1"
    assert error in result.stderr
