"""timm models by name, with ImageNet weights from the hub or from a local file."""

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


def build_model(
    name: str, num_classes: int, in_chans: int, pretrained: bool = False, weights: Path | None = None
) -> torch.nn.Module:
    """A timm classifier; pretrained weights keep their backbone, the head is new for num_classes."""
    check_model_name(name)
    kwargs = {"num_classes": num_classes, "in_chans": in_chans}
    if weights is not None:
        if not Path(weights).is_file():
            raise UserError(f"--weights {weights}: no such file")
        try:
            return timm.create_model(name, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}, **kwargs)
        except Exception as exc:  # wrong format or architecture
            raise UserError(f"--weights {weights}: cannot load into {name} ({exc.__class__.__name__}: {exc})") from None
    if pretrained:
        try:
            return timm.create_model(name, pretrained=True, **kwargs)
        except Exception as exc:  # offline, or no weights published for this model
            raise UserError(
                f"--pretrained: cannot get ImageNet weights for {name} ({exc.__class__.__name__}); "
                f"fetch them into the weights cache with `make weights MODEL={name}` where there is internet, "
                "or pass --weights PATH"
            ) from None
    return timm.create_model(name, pretrained=False, **kwargs)
