"""timm models by name, from random weights or a weights file, built for the data's image size."""

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


def create(name: str, img_size: int | None = None, **kwargs) -> torch.nn.Module:
    """timm.create_model, for images of img_size pixels where the model is built for one size (ViTs, Swin, Mixer:
    timm resizes their position embeddings, pretrained ones included); a convolutional net takes any size as it is."""
    default = getattr(timm.models.get_pretrained_cfg(name), "input_size", None) if img_size else None
    if img_size and default and tuple(default[1:]) != (img_size, img_size):
        try:
            return timm.create_model(name, img_size=img_size, **kwargs)
        except TypeError as exc:  # a model without an img_size argument: convolutional, any size
            if "img_size" not in str(exc):
                raise
    return timm.create_model(name, **kwargs)


def check_model_runs(name: str, num_classes: int, in_chans: int, img_size: int, drop_path: float | None = None) -> None:
    """Build the model on the meta device (no memory, no arithmetic) and pass it a batch of the data's shape: a model
    that cannot be built or run for it is one line, before a run writes anything."""
    check_model_name(name)
    if drop_path:
        try:
            with torch.device("meta"):
                create(name, img_size, num_classes=num_classes, in_chans=in_chans, drop_path_rate=drop_path)
        except TypeError as exc:
            if "drop_path_rate" not in str(exc):
                raise
            raise UserError(f"--drop-path {drop_path}: {name} has no stochastic depth; leave --drop-path at 0") from None
    try:
        with torch.device("meta"):
            model = create(name, img_size, num_classes=num_classes, in_chans=in_chans).eval()
            output = model(torch.empty(2, in_chans, img_size, img_size))
        if tuple(output.shape) != (2, num_classes):
            raise ValueError(f"it returns shape {tuple(output.shape)}, not (batch, {num_classes})")
    except Exception as exc:  # noqa: BLE001 - any failure of a third-party model is the same answer
        message = str(exc).splitlines()[0][:200] if str(exc) else exc.__class__.__name__
        raise UserError(
            f"--model {name}: cannot classify {in_chans}-band {img_size}x{img_size} images ({message}): pick "
            "another timm model (e.g. resnet18, tf_efficientnet_b5, vit_small_patch16_224, built for the size)"
        ) from None


def build_model(
    name: str,
    num_classes: int,
    in_chans: int,
    weights: Path | None = None,
    img_size: int | None = None,
    drop_path: float | None = None,
) -> torch.nn.Module:
    """A timm classifier, from random weights or a weights file (ImageNet's from weights.lock, eurosat.weights, or
    any timm/safetensors/torch file): the backbone is loaded, the head is new for num_classes. drop_path: timm's
    drop_path_rate (--drop-path), for the models that have stochastic depth."""
    check_model_name(name)
    kwargs = {"num_classes": num_classes, "in_chans": in_chans}
    if drop_path:
        kwargs["drop_path_rate"] = drop_path
    if weights is None:
        return create(name, img_size, pretrained=False, **kwargs)
    if not Path(weights).is_file():
        raise UserError(f"--weights {weights}: no such file")
    try:
        return create(name, img_size, pretrained=True, pretrained_cfg_overlay={"file": str(weights)}, **kwargs)
    except Exception as exc:  # wrong format or architecture
        raise UserError(f"--weights {weights}: cannot load into {name} ({exc.__class__.__name__}: {exc})") from None
