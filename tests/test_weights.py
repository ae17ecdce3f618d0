"""ImageNet weights pinned like packages: weights.lock names each model's hub repository, revision, file, size and
sha256; a run loads only that file, found offline (HF_HUB_OFFLINE=1) in a cache written in huggingface_hub's own
layout. A tampered file, a model the lock lacks (recorded, or refused under LOCKED=1) and missing weights are one
line each, before anything is written."""

import hashlib
import json
import os
import re
import shlex
import time
import tomllib
from pathlib import Path

import pytest
import timm
from helpers import SMALL, cached_weights, free_port, pinned_stand_in, read_metrics, run, run_project, single_run_dir

pytestmark = pytest.mark.slow  # real processes; make test-all runs them
MODEL = SMALL[SMALL.index("--model") + 1]
PRETRAINED = [arg for arg in SMALL if arg != "--no-pretrained"]  # the default: ImageNet weights
REPO_ID = timm.models.get_pretrained_cfg(MODEL).hf_hub_id


def offline(cache: Path, lock: Path, **env) -> dict:
    base = {key: value for key, value in os.environ.items() if key != "LOCKED"}  # (CI sets it for its image builds)
    return {**base, "HF_HUB_OFFLINE": "1", "HF_HOME": str(cache / "huggingface"), "EUROSAT_WEIGHTS_LOCK": str(lock), **env}


def train(data, out, env, *extra):
    return run_project("eurosat-amp", "--data", data, "--out", out, *PRETRAINED, "--epochs", "1", *extra, check=False, env=env)


def test_a_run_starts_from_the_locked_file_and_records_it(sample_dir, tmp_path):
    lock = tmp_path / "weights.lock"
    cache = cached_weights(tmp_path / "models", MODEL, lock)
    entry = tomllib.loads(lock.read_text())[MODEL]
    result = train(sample_dir, tmp_path / "runs", offline(cache, lock))
    assert result.returncode == 0, result.stderr
    run_dir = single_run_dir(tmp_path / "runs")
    recorded = json.loads((run_dir / "provenance.json").read_text())["pretrained"]
    assert recorded == {"model": MODEL, "source": f"hf-hub:{REPO_ID}@{entry['revision']}/model.safetensors", **entry}
    assert len(read_metrics(run_dir)) == 1

    blob = next((cache / "huggingface").rglob("blobs/*"))  # the same file, changed after it was locked
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    result = train(sample_dir, tmp_path / "again", offline(cache, lock))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    actual = hashlib.sha256(blob.read_bytes()).hexdigest()
    assert re.fullmatch(
        rf"error: \S+/model\.safetensors: sha256 {actual} \(\d+ bytes\), but {re.escape(str(lock))} pins {MODEL} to "
        rf"{entry['sha256']} \({entry['size']} bytes\): delete the file and run `make weights MODEL={MODEL}`",
        lines[0],
    )
    assert not (tmp_path / "again").exists()  # nothing trained, nothing written


def test_a_model_the_lock_lacks_is_recorded_and_said_and_refused_under_locked(sample_dir, tmp_path):
    lock = tmp_path / "weights.lock"
    lock.write_text("")
    cache = cached_weights(tmp_path / "models", MODEL)  # in the cache (as a download leaves it), not in the lock
    refused = train(sample_dir, tmp_path / "locked", offline(cache, lock, LOCKED="1"))
    assert refused.returncode == 2 and refused.stderr.strip().splitlines() == [
        f"error: --pretrained: {MODEL} is not in {lock}, and LOCKED=1 loads only locked weights: run `make weights "
        f"MODEL={MODEL}` where there is internet and commit weights.lock, or pass --no-pretrained"
    ]
    assert lock.read_text() == "" and not (tmp_path / "locked").exists()

    result = train(sample_dir, tmp_path / "runs", offline(cache, lock))
    assert result.returncode == 0, result.stderr
    entry = tomllib.loads(lock.read_text())[MODEL]
    blob = next((cache / "huggingface").rglob("blobs/*"))
    assert entry == {"repo": REPO_ID, "revision": (cache / "huggingface").joinpath(
        "hub", f"models--{REPO_ID.replace('/', '--')}", "refs", "main").read_text(), "file": "model.safetensors",
        "size": blob.stat().st_size, "sha256": hashlib.sha256(blob.read_bytes()).hexdigest()}  # fmt: skip
    source = f"hf-hub:{REPO_ID}@{entry['revision']}/model.safetensors"
    said = f"weights.lock: {MODEL} was not locked; recorded {source} (sha256 {entry['sha256']}): commit it: git add weights.lock"
    assert said in result.stdout


def test_without_the_weights_a_run_stops_before_it_writes_anything(sample_dir, tmp_path):
    lock = tmp_path / "weights.lock"
    cached_weights(tmp_path / "models", MODEL, lock)
    empty = tmp_path / "empty"
    result = train(sample_dir, tmp_path / "runs", offline(empty, lock))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --pretrained: cannot get ImageNet weights for {MODEL} (LocalEntryNotFoundError, HF_HUB_OFFLINE=1: the "
        f"cache only): run `make weights MODEL={MODEL}` where there is internet (and copy MODEL_CACHE here), or pass "
        "--no-pretrained"
    ]
    assert not (tmp_path / "runs").exists()


def test_make_weights_records_a_model_then_checks_every_locked_file(tmp_path):
    lock = tmp_path / "weights.lock"
    lock.write_text("")
    cache = cached_weights(tmp_path / "models", MODEL)
    env = offline(cache, lock)
    added = run("make", "weights", f"MODEL={MODEL}", f"MODEL_CACHE={cache}", f"WEIGHTS_LOCK={lock}", env=env)
    entry = tomllib.loads(lock.read_text())[MODEL]
    source = f"hf-hub:{REPO_ID}@{entry['revision']}/model.safetensors"
    assert added.stdout.splitlines()[-1] == f"weights.lock: {MODEL} added: {source}: commit it: git add weights.lock"
    checked = run("make", "weights", f"MODEL_CACHE={cache}", f"WEIGHTS_LOCK={lock}", env=env)
    assert re.fullmatch(rf"{MODEL}: \S+/snapshots/{entry['revision']}/model\.safetensors \(sha256 {entry['sha256']} checked\)\n",
                        checked.stdout)  # fmt: skip


@pytest.mark.parametrize("model, expected", [("resnet_nope", "error: --model resnet_nope: unknown timm model")])
def test_make_weights_bad_model_is_one_line(model, expected, tmp_path):
    env = offline(tmp_path, tmp_path / "lock")
    result = run("make", "weights", f"MODEL={model}", f"MODEL_CACHE={tmp_path}", env=env, check=False)
    assert result.returncode == 2 and result.stderr.startswith(expected), result.stderr


def make_train(data, out, cache, lock, env, *extra, check=False):
    args = shlex.join([*PRETRAINED, "--epochs", "1", "--out", str(out), *extra])
    settings = [f"DATA={data}", f"MODEL_CACHE={cache}", f"WEIGHTS_LOCK={lock}", f"ARGS={args}"]
    return run("make", "train", "RUNNER=local", *settings, env=env, check=check)


def test_make_train_locks_and_checks_the_weights_on_the_host_before_training_starts(sample_dir, tmp_path):
    """The host step (python -m eurosat.weights --for-run): a model the lock lacks is recorded there, with the line
    that commits it, so the run (in a container, with the lock read-only) finds it locked; a locked file is checked;
    a tampered one is one line before any training process starts."""
    lock = tmp_path / "weights.lock"
    lock.write_text("")
    cache = cached_weights(tmp_path / "models", MODEL)
    env = offline(cache, lock)
    recorded = make_train(sample_dir, tmp_path / "runs", cache, lock, env, check=True)
    entry = tomllib.loads(lock.read_text())[MODEL]
    said = f"weights.lock: {MODEL} was not locked; recorded hf-hub:{REPO_ID}@{entry['revision']}/model.safetensors"
    checked = f"weights: {MODEL}: "
    assert recorded.stdout.index(said) < recorded.stdout.index(checked) < recorded.stdout.index("run ")
    assert recorded.stdout.count(said) == 1  # by the host; the run found its model locked
    assert len(read_metrics(single_run_dir(tmp_path / "runs"))) == 1

    blob = next((cache / "huggingface").rglob("blobs/*"))
    blob.write_bytes(blob.read_bytes()[:-1] + b"\0")
    refused = make_train(sample_dir, tmp_path / "again", cache, lock, env)
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert refused.returncode != 0 and len(errors) == 1 and f"pins {MODEL} to {entry['sha256']}" in errors[0]
    assert "Traceback" not in refused.stderr and "run " not in refused.stdout and not (tmp_path / "again").exists()

    skipped = make_train(sample_dir, tmp_path / "random", cache, lock, env, "--no-pretrained")  # needs no hub weights
    assert skipped.returncode == 0 and "weights: " not in skipped.stdout, skipped.stderr


def test_an_entry_pinned_by_sha256_alone_is_resolved_by_make_weights_and_another_file_refused(tmp_path):
    """The committed tf_efficientnet_b5 entry has no revision or size (public records give only the sha256): the
    first fetch takes the hub's current revision, checks the sha256 and writes the commit and size it found."""
    lock, cache = tmp_path / "weights.lock", tmp_path / "models"
    lock.write_text("")
    found = pinned_stand_in(cache, lock, "tf_efficientnet_b5", resolved=False)
    assert tomllib.loads(lock.read_text())["tf_efficientnet_b5"] == {key: found[key] for key in ("repo", "file", "sha256")}
    env = offline(cache, lock)
    settings = [f"MODEL_CACHE={cache}", f"WEIGHTS_LOCK={lock}"]
    result = run("make", "weights", "MODEL=tf_efficientnet_b5", *settings, env=env)
    assert tomllib.loads(lock.read_text())["tf_efficientnet_b5"] == found
    source = f"hf-hub:{found['repo']}@{found['revision']}/pytorch_model.bin"
    assert (
        f"weights.lock: tf_efficientnet_b5 resolved: {source}, {found['size']} bytes: commit it: git add weights.lock"
        in result.stdout
    )
    again = run("make", "weights", *settings, env=env)  # resolved: nothing more to write
    assert "resolved" not in again.stdout and f"(sha256 {found['sha256']} checked)" in again.stdout

    other = tmp_path / "other"  # a cache where the hub's main holds another file
    pinned_stand_in(other, tmp_path / "unused.lock", "tf_efficientnet_b5", b"other weights")
    pinned = {key: found[key] for key in ("repo", "file", "sha256")}
    lock.write_text('["tf_efficientnet_b5"]\n' + "".join(f'{key} = "{value}"\n' for key, value in pinned.items()))
    before = lock.read_text()
    refused = run("make", "weights", f"MODEL_CACHE={other}", f"WEIGHTS_LOCK={lock}", env=offline(other, lock), check=False)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert re.search(r"error: \S+/pytorch_model\.bin: sha256 [0-9a-f]{64} \(13 bytes\), but \S+ pins tf_efficientnet_b5 to "
                     rf"{found['sha256']}: delete the file", refused.stderr), refused.stderr  # fmt: skip
    assert lock.read_text() == before


def test_a_hub_out_of_reach_is_one_line_within_seconds_without_retries(sample_dir, tmp_path):
    """No HF_HUB_OFFLINE and no connection: a probe of a few seconds instead of the hub client's ten retries."""
    lock = tmp_path / "weights.lock"
    lock.write_text("")
    env = {key: value for key, value in offline(tmp_path / "empty", lock).items() if key != "HF_HUB_OFFLINE"}
    port = free_port()
    env["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"  # nothing listens there
    start = time.monotonic()
    result = train(sample_dir, tmp_path / "runs", env)
    print(f"refused after {time.monotonic() - start:.1f} s")
    assert result.returncode == 2 and "Retrying" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines() == [
        f"error: --pretrained: cannot get ImageNet weights for {MODEL} (LocalEntryNotFoundError; 127.0.0.1:{port} "
        f"unreachable (Connection refused): the cache only): run `make weights MODEL={MODEL}` where there is internet "
        "(and copy MODEL_CACHE here), or pass --no-pretrained"
    ]
    assert not (tmp_path / "runs").exists()
