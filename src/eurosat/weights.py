"""make weights MODEL=<timm name>: put a model's pretrained weights into the weights cache (HF_HOME, TORCH_HOME).

The Makefile points both at MODEL_CACHE, which compose, the dev container, the Slurm script and the PyTorchJob
mount at /models: weights fetched once, where there is internet, serve every later `--pretrained` run, in a
container started with --rm too, and offline with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import os
import sys

import timm

from eurosat.cli import run_cli
from eurosat.errors import UserError
from eurosat.models import check_model_name


def fetch(name: str) -> str:
    """Download (or find in the cache) `name`'s pretrained weights; where they are, in words."""
    check_model_name(name)
    source = timm.models.get_pretrained_cfg(name)
    if source is None or not (source.hf_hub_id or source.url):
        raise UserError(f"MODEL={name}: timm publishes no pretrained weights for it; pick another model")
    try:
        timm.create_model(name, pretrained=True)
    except Exception as exc:  # offline, a proxy, or not in the cache with HF_HUB_OFFLINE=1
        offline = " (HF_HUB_OFFLINE=1: the cache only)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise UserError(
            f"MODEL={name}: cannot get its pretrained weights{offline} ({exc.__class__.__name__}): run "
            f"`make weights MODEL={name}` where there is internet and copy MODEL_CACHE here, or pass --weights PATH"
        ) from None
    where = os.environ.get("HF_HOME") if source.hf_hub_id else os.environ.get("TORCH_HOME")
    origin = f"hf-hub:{source.hf_hub_id}" if source.hf_hub_id else source.url
    return f"{name}: pretrained weights ({origin}) are in {where or 'the default cache'}"


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise UserError("usage: python -m eurosat.weights MODEL (a timm model name)")
    print(fetch(argv[0]))


if __name__ == "__main__":
    run_cli(main)
