"""timm models by name, from random weights or a weights file."""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch

from eurosat.errors import UserError


def check_model_name(name: str) -> None:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)  # what a typo most likely meant
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"--model {name}: unknown timm model{hint}; e.g. tf_efficientnet_b5, resnet18, resnet10t")


def build_model(name: str, num_classes: int, in_chans: int, weights: Path | None = None) -> torch.nn.Module:
    """A timm classifier, from random weights or a weights file (ImageNet's from weights.lock, eurosat.weights, or
    any timm/safetensors/torch file): the backbone is loaded, the head is new for num_classes."""
    check_model_name(name)
    kwargs = {"num_classes": num_classes, "in_chans": in_chans}
    if weights is None:
        return timm.create_model(name, pretrained=False, **kwargs)
    if not Path(weights).is_file():
        raise UserError(f"--weights {weights}: no such file")
    try:
        return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}, **kwargs)
    except Exception as exc:  # wrong format or architecture
        raise UserError(f"--weights {weights}: cannot load into {name} ({exc.__class__.__name__}: {exc})") from None
