"""The weights cache in containers: `make train` mounts MODEL_CACHE at /models and the weights lock make uses at
/workspace/weights.lock, and passes HF_HUB_OFFLINE on, so a container started with --rm trains from the locked
ImageNet weights offline, from the host's cache."""

import os

from engine import make_settings
from helpers import SMALL, cached_weights, copy_repository, make_in_clone, read_metrics, single_run_dir

from eurosat import manifest


def test_a_container_trains_pretrained_offline_from_the_host_cache(built_images, sample_dir, tmp_path):
    repo_clone = copy_repository(tmp_path / "repo")
    model = SMALL[SMALL.index("--model") + 1]
    lock = tmp_path / "weights.lock"  # what make weights wrote where there was internet
    cache = cached_weights(tmp_path / "models", model, lock)
    project = manifest.default_project()
    args = " ".join([*SMALL, "--epochs", "1", "--pretrained"])
    offline = {**os.environ, "HF_HUB_OFFLINE": "1"}
    settings = [f"PROJECT={project}", "RUNNER=docker", f"DATA={sample_dir}", f"ARGS={args}", f"WEIGHTS_LOCK={lock}"]
    settings += make_settings()
    make_in_clone(repo_clone, "train", f"MODEL_CACHE={cache}", *settings, env=offline)
    assert len(read_metrics(single_run_dir(repo_clone / "runs" / project))) == 1

    empty = tmp_path / "empty"  # the same command without the weights: they came from the cache above
    result = make_in_clone(repo_clone, "train", f"MODEL_CACHE={empty}", *settings, env=offline, check=False)
    assert result.returncode != 0
    error = f"error: --pretrained: cannot get ImageNet weights for {model} (LocalEntryNotFoundError, HF_HUB_OFFLINE=1"
    assert error in result.stderr
