"""The recipe settings both projects share (eurosat.cli's flags, named as timm's train.py names them): the optimizer
(--opt, --momentum, --weight-decay), the learning-rate schedule (--sched, --warmup-epochs, --decay-epochs,
--decay-rate), label smoothing (--label-smoothing, timm's --smoothing), the batch augmentation (--augment) and the
weight average (--ema). The training loops apply --clip-grad and --accum-steps; the model gets --drop-path. The
defaults are the articles' recipe: Adam at a constant --lr, no weight decay, plain cross-entropy, no augmentation.
Functions of the run's config, which a project's train.py calls and can replace with its own."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.optim.lr_scheduler import LambdaLR
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

# The settings a model (the Lightning module) reads from a run's config: its optimizer, schedule, loss, augmentation
# and drop path (--clip-grad, --accum-steps and --ema are the training loop's or the Trainer's)
RECIPE = (
    "opt", "momentum", "weight_decay", "sched", "warmup_epochs", "decay_epochs", "decay_rate", "epochs",
    "label_smoothing", "augment", "seed", "drop_path",
)  # fmt: skip


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


def lr_factor(step: int, steps_per_epoch: int, config: dict) -> float:
    """The learning rate of optimizer step `step` (0 the first) as a share of --lr. A warm-up of --warmup-epochs rises
    linearly to it (1/(W+1), 2/(W+1), ... over its W steps), then --sched: constant; cosine, from 1 at the end of the
    warm-up towards 0 at the run's last step; or step, x --decay-rate every --decay-epochs (counted from the start)."""
    warmup = round((config.get("warmup_epochs") or 0) * steps_per_epoch)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    schedule = config.get("sched", "constant")
    if schedule == "cosine":
        total = config["epochs"] * steps_per_epoch
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    if schedule == "step":
        every = max(1, round(config.get("decay_epochs", 30) * steps_per_epoch))
        return config.get("decay_rate", 0.1) ** (step // every)
    return 1.0


def make_scheduler(optimizer: torch.optim.Optimizer, config: dict, steps_per_epoch: int) -> LambdaLR:
    """The schedule, stepped once per optimizer step (so a short epoch still warms up); its state_dict is the step
    count, which a checkpoint keeps."""
    return LambdaLR(optimizer, lambda step: lr_factor(step, steps_per_epoch, config))


def optimizer_steps(batches: int, config: dict) -> int:
    """Optimizer steps in an epoch of `batches`: one per --accum-steps batches, and one for a last, shorter group."""
    return math.ceil(batches / (config.get("accum_steps") or 1))


def make_ema(model: torch.nn.Module, config: dict) -> AveragedModel | None:
    """--ema DECAY: an exponential moving average of the weights and the buffers (BatchNorm statistics included),
    updated after every optimizer step, as Lightning's EMAWeightAveraging: the first update copies the weights, each
    later one moves the average (1 - DECAY) of the way to them. None without --ema."""
    decay = config.get("ema")
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True) if decay else None


def flips(x: torch.Tensor, key: tuple[int, ...]) -> torch.Tensor:
    """Each image of the batch in one of its eight flips and quarter turns (an up-down flip, a left-right flip and a
    transpose, each or not: exact symmetries of nadir imagery), chosen from `key` alone, so that a repeated or resumed
    run flips every batch the same way. A non-square batch gets the four flips only."""
    rng = np.random.default_rng([k % 2**32 for k in key])
    chosen = torch.from_numpy(rng.random((3, len(x))) < 0.5).to(x.device).view(3, -1, 1, 1, 1)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    x = torch.where(chosen[0], x.flip(-2), x)
    x = torch.where(chosen[1], x.flip(-1), x)
    if x.shape[-1] == x.shape[-2]:
        x = torch.where(chosen[2], x.transpose(-1, -2), x)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def make_augment(config: dict):
    """--augment: None for none; for flips, a function of (batch, step, epoch, rank), seeded by --seed too."""
    if config.get("augment", "none") == "none":
        return None
    return lambda x, step, epoch, rank=0: flips(x, (config["seed"], epoch, step, rank))
