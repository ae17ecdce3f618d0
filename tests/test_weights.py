"""The weights cache: `make weights` and `--pretrained` offline (HF_HUB_OFFLINE=1) use a cache entry written here in
huggingface_hub's own on-disk layout; without one they stop with one line."""

import os
import re
from pathlib import Path

import pytest
import timm
from helpers import SMALL, cached_weights, read_metrics, run, run_project, single_run_dir

pytestmark = pytest.mark.slow  # real processes and servers; make test-all runs them
MODEL = SMALL[SMALL.index("--model") + 1]


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    return cached_weights(tmp_path_factory.mktemp("models"), MODEL)


def offline(**env) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", **env}


def test_make_weights_offline_finds_the_cached_weights(model_cache):
    result = run("make", "weights", f"MODEL={MODEL}", f"MODEL_CACHE={model_cache}", env=offline())
    repo_id = timm.models.get_pretrained_cfg(MODEL).hf_hub_id
    assert f"{MODEL}: pretrained weights (hf-hub:{repo_id}) are in {model_cache / 'huggingface'}" in result.stdout


def test_pretrained_training_offline_uses_the_cache(model_cache, sample_dir, tmp_path):
    out = tmp_path / "runs"
    hf_home = model_cache / "huggingface"
    run_project("eurosat-amp", "--data", sample_dir, "--out", out, *SMALL, "--epochs", "1", "--pretrained",
                env=offline(HF_HOME=str(hf_home)))  # fmt: skip
    assert len(read_metrics(single_run_dir(out))) == 1
    # the same command with an empty cache cannot train: the weights above came from the cache
    empty = tmp_path / "empty"
    result = run_project("eurosat-amp", "--data", sample_dir, "--out", out, *SMALL, "--pretrained", check=False,
                         env=offline(HF_HOME=str(empty)))  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: --pretrained: cannot get ImageNet weights for {MODEL} (LocalEntryNotFoundError); fetch them into "
        f"the weights cache with `make weights MODEL={MODEL}` where there is internet, or pass --weights PATH"
    ]


def test_make_weights_offline_without_the_weights_is_one_line(tmp_path):
    result = run("make", "weights", f"MODEL={MODEL}", f"MODEL_CACHE={tmp_path}", env=offline(), check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and re.match(r"make(\[\d+\])?: \*\*\*", lines[1]), result.stderr  # make's line follows ours
    assert lines[0].startswith(f"error: MODEL={MODEL}: cannot get its pretrained weights (HF_HUB_OFFLINE=1: the cache only)")
    assert not any(tmp_path.rglob("*.safetensors"))


@pytest.mark.parametrize(
    "model, expected",
    [("", "error: pass MODEL=<timm model name>"), ("resnet_nope", "error: --model resnet_nope: unknown timm model")],
)
def test_make_weights_bad_model_is_one_line(model, expected, tmp_path):
    result = run("make", "weights", f"MODEL={model}", f"MODEL_CACHE={tmp_path}", env=offline(), check=False)
    assert result.returncode == 2 and result.stderr.startswith(expected), result.stderr
