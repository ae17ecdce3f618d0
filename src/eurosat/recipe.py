"""The recipe settings both projects share (eurosat.cli's flags, named as timm's train.py names them): the optimizer
(--opt, --momentum, --weight-decay), label smoothing (--label-smoothing, timm's --smoothing) and gradient clipping
(--clip-grad, applied by the training loops). The defaults are the articles' recipe: Adam at --lr, no weight decay,
plain cross-entropy, no clipping. Functions of the run's config, which a project's train.py can replace."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The settings the optimizer and the loss read from a run's config (--clip-grad is the training loop's)
RECIPE = ("opt", "momentum", "weight_decay", "label_smoothing")


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """timm's rule: weight decay on weight matrices and kernels, none on biases and normalisation weights."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            (no_decay if parameter.ndim <= 1 or name.endswith(".bias") else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_optimizer(model: torch.nn.Module, config: dict, device: torch.device, fused: bool | None = None):
    """The run's optimizer: fused (one kernel for all parameters) on GPUs; on the CPU PyTorch's default measured
    faster. Without weight decay, one parameter group, as the articles' Adam (and every checkpoint before --opt)."""
    fused = device.type == "cuda" if fused is None else fused
    weight_decay = config.get("weight_decay") or 0.0
    parameters = parameter_groups(model, weight_decay) if weight_decay else model.parameters()
    settings = {"lr": config["lr"], "weight_decay": weight_decay, "fused": fused or None}
    if config.get("opt", "adam") == "sgd":
        return torch.optim.SGD(parameters, momentum=config.get("momentum", 0.9), **settings)
    return (torch.optim.AdamW if config.get("opt") == "adamw" else torch.optim.Adam)(parameters, **settings)


def training_loss(config: dict, ignore_index: int = -100):
    """The training loss: cross-entropy, with --label-smoothing. Validation keeps plain cross-entropy, as timm's."""
    smoothing = config.get("label_smoothing") or 0.0

    def loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=smoothing, ignore_index=ignore_index)

    return loss
